use super::*;
use crate::exec::Progress;
use crate::gradient::gradients;
use crate::knn::{Distance, TopK};
use crate::testutil::Rng;
use ndarray::s;

/// A synthetic workload: records, queries near their relevant records, a train/val split.
struct Data {
    corpus: Array2<f32>,
    keys: Vec<u64>,
    queries: Array2<f32>,
    qrels: Vec<Qrel>,
    train: Vec<usize>,
    val: Vec<usize>,
    n_labelled: u64,
}

fn make_data(seed: u64, n: usize, dim: usize, nq: usize, unit: bool) -> Data {
    let mut rng = Rng::new(seed);
    let mut corpus = rng.matrix(n, dim);
    if !unit {
        // random norms in [0.5, 2]
        for mut r in corpus.outer_iter_mut() {
            let f = 1.25 + 0.75 * rng.unif();
            r.iter_mut().for_each(|x| *x *= f);
        }
    } else {
        for mut r in corpus.outer_iter_mut() {
            let nn = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.iter_mut().for_each(|x| *x /= nn);
        }
    }
    // labelled records are keys 0..n_lab (the first rows), others n_lab + row
    let n_lab = (n / 3).max(1);
    let keys: Vec<u64> = (0..n as u64).collect();
    let mut queries = Array2::<f32>::zeros((nq, dim));
    let mut qrels = Vec::new();
    for qi in 0..nq {
        let nrel = 1 + rng.below(3);
        for _ in 0..nrel {
            let r = rng.below(n_lab);
            let grade = 1.0 + rng.below(2) as f64;
            qrels.push(Qrel {
                query: qi as u32,
                record: r as u64,
                grade,
            });
            let mut row = queries.row_mut(qi);
            row += &corpus.row(r);
        }
        for x in queries.row_mut(qi).iter_mut() {
            *x += 0.9 * rng.unif();
        }
        if rng.below(10) == 0 {
            // a judged-but-not-relevant record
            qrels.push(Qrel {
                query: qi as u32,
                record: rng.below(n_lab) as u64,
                grade: 0.0,
            });
        }
    }
    let perm = crate::split::permutation(nq, seed as u32);
    let nv = nq / 3;
    Data {
        corpus,
        keys,
        queries,
        qrels,
        train: perm[nv..].to_vec(),
        val: perm[..nv].to_vec(),
        n_labelled: n_lab as u64,
    }
}

fn val_parts(d: &Data) -> (Array2<f32>, Vec<Qrel>) {
    let vq = d.queries.select(Axis(0), &d.val);
    let mut vr = Vec::new();
    for (i, &q) in d.val.iter().enumerate() {
        for r in d.qrels.iter().filter(|r| r.query as usize == q) {
            vr.push(Qrel {
                query: i as u32,
                ..*r
            });
        }
    }
    (vq, vr)
}

fn fit_pass(d: &Data, config: FitConfig, batch: usize) -> FitPass {
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled).unwrap();
    let (vq, vr) = val_parts(d);
    let mut fp = FitPass::new(ms, vq, vr, config).unwrap();
    // push in a scrambled order, in batches
    let order = crate::split::permutation(d.corpus.nrows(), 99);
    let mut h = Hooks::noop();
    for chunk in order.chunks(batch) {
        let keys: Vec<u64> = chunk.iter().map(|&i| d.keys[i]).collect();
        let v = d.corpus.select(Axis(0), chunk);
        fp.push_batch(&keys, v.view(), &mut h).unwrap();
    }
    fp
}

/// Full re-rank: apply() at gamma, every other record normalised, exact f64 scores.
fn brute_metric(d: &Data, config: FitConfig, gamma: f64, metric: Metric, use_topk: bool) -> f64 {
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled).unwrap();
    let rows: Vec<usize> = ms
        .keys
        .iter()
        .map(|&k| d.keys.iter().position(|&x| x == k).unwrap())
        .collect();
    let dm = d.corpus.select(Axis(0), &rows);
    let (x, changed) = apply(
        config.method,
        gamma,
        dm.view(),
        ms.g.view(),
        config.negative_rule,
    )
    .unwrap();
    let mut all = d.corpus.clone();
    for mut r in all.outer_iter_mut() {
        let nn = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        if nn > 0.0 {
            r.iter_mut().for_each(|v| *v = (*v as f64 / nn) as f32);
        }
    }
    for (i, &row) in rows.iter().enumerate() {
        if changed[i] {
            all.row_mut(row).assign(&x.row(i));
        }
    }
    let (vq, vr) = val_parts(d);
    let mut total = 0.0;
    let mut count = 0;
    let topk = if use_topk {
        let mut tk = TopK::new(vq.clone(), metric.k(), Distance::InnerProduct).unwrap();
        tk.push_batch(&d.keys, all.view(), &mut Hooks::noop())
            .unwrap();
        Some(tk.finish())
    } else {
        None
    };
    for qi in 0..vq.nrows() {
        let rel: Vec<(u64, f64)> = vr
            .iter()
            .filter(|r| r.query as usize == qi)
            .map(|r| (r.record, r.grade))
            .collect();
        let j = Judged::new(&rel);
        if j.n_rel == 0 {
            continue;
        }
        count += 1;
        total += match &topk {
            Some(t) => metric.value(&t[qi], &rel),
            None => {
                let mut sc: Vec<(f64, u64)> = all
                    .outer_iter()
                    .zip(&d.keys)
                    .map(|(v, &k)| {
                        (
                            v.iter()
                                .zip(vq.row(qi).iter())
                                .map(|(&a, &b)| a as f64 * b as f64)
                                .sum::<f64>(),
                            k,
                        )
                    })
                    .collect();
                sc.sort_by(|a, b| better_first(*a, *b));
                j.value_ranked(metric, sc.iter().map(|p| p.1))
            }
        };
    }
    total / count as f64
}

fn configs() -> Vec<FitConfig> {
    let mut v = Vec::new();
    for method in [Method::NudgeN, Method::NudgeM] {
        for rule in [NegativeRule::Skip, NegativeRule::Move] {
            v.push(FitConfig {
                method,
                selection: Selection::Best(Metric::Ndcg(10)),
                negative_rule: rule,
            });
        }
    }
    v
}

#[test]
fn one_pass_metric_equals_full_rerank() {
    let metrics = [
        Metric::Ndcg(10),
        Metric::Recall(5),
        Metric::CappedRecall(3),
        Metric::Mrr(10),
        Metric::Top1,
        Metric::Ndcg(1000),
    ];
    for (seed, unit) in [(1u64, true), (2, false)] {
        let d = make_data(seed, 240, 8, 90, unit);
        for (ci, cfg) in configs().into_iter().enumerate() {
            for &metric in metrics.iter().skip((ci + seed as usize) % 2).step_by(2) {
                let cfg = FitConfig {
                    selection: Selection::Best(metric),
                    ..cfg
                };
                let fp = fit_pass(&d, cfg, 37);
                let gmax = if cfg.method == Method::NudgeN {
                    4.0
                } else {
                    6.0
                };
                let mut mism = 0;
                for t in 0..21 {
                    let gamma = gmax * t as f64 / 20.0 * (1.0 - 1e-3 * (t % 3) as f64);
                    let one = fp.validation_metric_at(gamma).unwrap();
                    let brute = brute_metric(&d, cfg, gamma, metric, false);
                    assert!(
                        (one - brute).abs() < 1e-9,
                        "{cfg:?} {metric} gamma {gamma}: {one} vs {brute}"
                    );
                    // and against apply() + the f32 TopK engine: equal up to float near-ties
                    if t % 4 == 0 {
                        let tk = brute_metric(&d, cfg, gamma, metric, true);
                        if (one - tk).abs() > 1e-9 {
                            mism += 1;
                        }
                    }
                }
                assert_eq!(mism, 0, "{cfg:?} {metric}");
            }
        }
    }
}

/// The grid sweep (each gamma scores only the candidates whose range covers it) equals a full
/// re-rank at every grid point, across the switch to x = g and for duplicated G rows.
#[test]
fn grid_sweep_equals_full_rerank_at_every_point() {
    for (seed, unit) in [(3u64, true), (4, false)] {
        let d = make_data(seed, 200, 6, 70, unit);
        for cfg in configs().into_iter().filter(|c| c.method == Method::NudgeN) {
            for metric in [Metric::Ndcg(10), Metric::Top1, Metric::Recall(3)] {
                let cfg = FitConfig { selection: Selection::Best(metric), ..cfg };
                let fp = fit_pass(&d, cfg, 29);
                let prep = fp.prepare().unwrap();
                let grid: Vec<f64> = (0..=400).map(|i| 4.0 * i as f64 / 400.0).collect();
                let swept = fp.eval_grid(&prep, &grid, metric, &mut Hooks::noop()).unwrap();
                for (&g, &v) in grid.iter().zip(&swept) {
                    let brute = brute_metric(&d, cfg, g, metric, false);
                    assert!((v - brute).abs() < 1e-9, "{cfg:?} {metric} gamma {g}: sweep {v} vs brute {brute}");
                }
            }
        }
    }
}

#[test]
fn best_selection_picks_middle_of_best_region() {
    let d = make_data(5, 300, 8, 120, true);
    for cfg in configs() {
        let fp = fit_pass(&d, cfg, 64);
        let at = |g: f64| fp.validation_metric_at(g).unwrap();
        let before = at(0.0);
        let out = fit_pass(&d, cfg, 1000).finish(&mut Hooks::noop()).unwrap();
        let maxv = out
            .curve
            .iter()
            .map(|p| p.1)
            .fold(f64::NEG_INFINITY, f64::max);
        assert_eq!(out.metric, Some(Metric::Ndcg(10)));
        assert!((out.validation_after.unwrap() - maxv).abs() < 1e-12);
        assert!((out.validation_before.unwrap() - before).abs() < 1e-12);
        assert!((at(out.gamma) - maxv).abs() < 1e-12);
        assert!(out.validation_after.unwrap() >= before);
        // the chosen point is the middle of the widest maximal run of the curve
        let idx = out.curve.iter().position(|p| p.0 == out.gamma).unwrap();
        let on = |i: usize| (out.curve[i].1 - maxv).abs() <= 1e-12;
        let (mut s, mut e) = (idx, idx);
        while s > 0 && on(s - 1) {
            s -= 1;
        }
        while e + 1 < out.curve.len() && on(e + 1) {
            e += 1;
        }
        assert_eq!(idx, s + (e - s) / 2, "{cfg:?}");
        // grid: 1001 points on [0, 2] (N/Skip), 2001 on [0, 4] (N/Move), M: [0, 2^j]
        let last = out.curve.last().unwrap().0;
        match (cfg.method, cfg.negative_rule) {
            (Method::NudgeN, NegativeRule::Skip) => {
                assert_eq!((out.curve.len(), last), (1001, 2.0))
            }
            (Method::NudgeN, NegativeRule::Move) => {
                assert_eq!((out.curve.len(), last), (2001, 4.0))
            }
            _ => assert!(out.curve.len() == 1001 && [2.0, 4.0, 8.0, 16.0].contains(&last)),
        }
        // apply consistency
        let (x, ch) = apply(
            cfg.method,
            out.gamma,
            out.original.view(),
            gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled)
                .unwrap()
                .g
                .view(),
            cfg.negative_rule,
        )
        .unwrap();
        assert_eq!(x, out.vectors);
        assert_eq!(ch, out.changed);
        for (i, &k) in out.keys.iter().enumerate() {
            assert_eq!(out.original.row(i), d.corpus.row(k as usize));
        }
    }
}

#[test]
fn widest_run_and_sweep_helpers() {
    assert_eq!(
        widest_best_run(&[0.1, 0.5, 0.5, 0.2, 0.5, 0.5, 0.5, 0.3]),
        (4, 6)
    );
    assert_eq!(widest_best_run(&[0.5, 0.5, 0.2, 0.5, 0.5]), (0, 1));
    assert_eq!(widest_best_run(&[0.3]), (0, 0));
    assert_eq!(widest_best_run(&[0.1, 0.2, 0.3]), (2, 2));
    // the reference's sweep: intervals [0,1], [0.5,2], [0.5,0.7], [3, inf)
    let (g, curve) =
        most_covered_point(&[(0.0, 1.0), (0.5, 2.0), (0.5, 0.7), (3.0, f64::INFINITY)]);
    assert_eq!(g, 0.5);
    assert_eq!(
        curve,
        vec![(0.0, 1), (0.5, 3), (0.7, 2), (1.0, 1), (2.0, 0), (3.0, 1)]
    );
    // an interval ending where another starts: the coverage counted is right of the point
    let (g, _) = most_covered_point(&[(0.0, 1.0), (1.0, 2.0), (1.5, 3.0)]);
    assert_eq!(g, 1.5);
    assert_eq!(most_covered_point(&[]).0, 0.0);
    // degenerate interval only: never counted
    assert_eq!(most_covered_point(&[(0.4, 0.4)]).0, 0.0);
    // first maximum wins
    assert_eq!(most_covered_point(&[(0.1, 0.2), (0.3, 0.4)]).0, 0.1);
}

/// Top-1 accuracy by brute force over all records at gamma.
fn brute_top1(d: &Data, cfg: FitConfig, gamma: f64) -> f64 {
    brute_metric(d, cfg, gamma, Metric::Top1, false)
}

#[test]
fn parity_nudge_m_sweep_matches_brute_force() {
    for seed in [11u64, 12] {
        let d = make_data(seed, 200, 6, 150, true);
        let cfg = FitConfig::new(Method::NudgeM, Selection::Parity);
        let out = fit_pass(&d, cfg, 50).finish(&mut Hooks::noop()).unwrap();
        assert_eq!(out.metric, Some(Metric::Top1));
        let g = out.gamma;
        let best_cov = out.curve.iter().map(|p| p.1).fold(0.0, f64::max);
        assert!(best_cov > 0.0);
        // distinct event points; brute force at the midpoint right of each equals the sweep
        let pts: Vec<(f64, f64)> = out.curve.clone();
        let mut checked = 0;
        for (wi, w) in pts.windows(2).enumerate() {
            let (v, cov) = w[0];
            let next = w[1].0;
            if next - v > 1e-4 && (wi % 2 == 0 || v == g) {
                let b = brute_top1(&d, cfg, 0.5 * (v + next));
                assert!(
                    (b - cov).abs() < 1e-12,
                    "seed {seed} right of {v}: {b} vs {cov}"
                );
                checked += 1;
            }
            if v == g {
                // the chosen point opens the first best region
                assert_eq!(cov, best_cov);
            }
            if v < g {
                assert!(cov < best_cov);
            }
        }
        assert!(checked > 5, "{checked}");
        // no gamma on a fine grid does better
        for t in 0..80 {
            let gamma = 3.0 * t as f64 / 79.0;
            let acc = brute_top1(&d, cfg, gamma);
            assert!(
                acc <= best_cov + 1e-12,
                "seed {seed} gamma {gamma}: {acc} > {best_cov}"
            );
        }
        assert!((out.validation_before.unwrap() - brute_top1(&d, cfg, 0.0)).abs() < 1e-12);
    }
}

#[test]
fn parity_nudge_n_grid_first_max() {
    let d = make_data(21, 250, 8, 150, true);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Parity);
    let out = fit_pass(&d, cfg, 33).finish(&mut Hooks::noop()).unwrap();
    assert_eq!(out.curve.len(), 25);
    let mut best = (0.0, -1.0);
    for (i, &(g, v)) in out.curve.iter().enumerate() {
        assert_eq!(g, 0.02 * i as f64);
        let b = brute_top1(&d, cfg, g);
        assert!((b - v).abs() < 1e-12);
        if v > best.1 {
            best = (g, v);
        }
    }
    assert_eq!(out.gamma, best.0);
    assert_eq!(out.validation_after, Some(best.1));
    assert_eq!(out.metric, Some(Metric::Top1));
}

#[test]
fn fixed_gamma_with_and_without_validation() {
    let d = make_data(31, 120, 5, 60, false);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Fixed(0.3));
    let out = fit_pass(&d, cfg, 40).finish(&mut Hooks::noop()).unwrap();
    assert_eq!(out.gamma, 0.3);
    assert_eq!(out.metric, Some(Metric::Ndcg(10)));
    let b = brute_metric(&d, cfg, 0.3, Metric::Ndcg(10), false);
    assert!((out.validation_after.unwrap() - b).abs() < 1e-12);
    // no validation queries
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled).unwrap();
    let n = ms.keys.len();
    let mut fp = FitPass::new(
        ms.clone(),
        Array2::zeros((0, 5)),
        vec![],
        FitConfig::new(Method::NudgeM, Selection::Fixed(0.5)),
    )
    .unwrap();
    fp.push_batch(&d.keys, d.corpus.view(), &mut Hooks::noop())
        .unwrap();
    assert!(matches!(
        fp.validation_metric_at(0.1),
        Err(NudgeError::Empty { .. })
    ));
    let out = fp.finish(&mut Hooks::noop()).unwrap();
    assert_eq!(
        (out.validation_before, out.validation_after, out.metric),
        (None, None, None)
    );
    assert_eq!(out.keys.len(), n);
    assert!(out.changed.iter().all(|&c| c));
    // gamma 0: nothing changes
    let mut fp = FitPass::new(
        ms,
        Array2::zeros((0, 5)),
        vec![],
        FitConfig::new(Method::NudgeN, Selection::Fixed(0.0)),
    )
    .unwrap();
    fp.push_batch(&d.keys, d.corpus.view(), &mut Hooks::noop())
        .unwrap();
    let out = fp.finish(&mut Hooks::noop()).unwrap();
    assert_eq!(out.vectors, out.original);
    assert!(out.changed.iter().all(|&c| !c));
}

#[test]
fn bad_input_errors() {
    let d = make_data(41, 60, 4, 30, true);
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled).unwrap();
    let (vq, vr) = val_parts(&d);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let new = || FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap();
    let mut h = Hooks::noop();

    // constructor
    assert!(matches!(
        FitPass::new(ms.clone(), Array2::zeros((0, 4)), vec![], cfg),
        Err(NudgeError::Empty { .. })
    ));
    assert!(matches!(
        FitPass::new(
            ms.clone(),
            Array2::zeros((0, 4)),
            vec![],
            FitConfig::new(Method::NudgeN, Selection::Parity)
        ),
        Err(NudgeError::Empty { .. })
    ));
    let no_rel: Vec<Qrel> = vr.iter().map(|q| Qrel { grade: 0.0, ..*q }).collect();
    assert!(matches!(
        FitPass::new(ms.clone(), vq.clone(), no_rel, cfg),
        Err(NudgeError::Empty { .. })
    ));
    assert!(matches!(
        FitPass::new(ms.clone(), Array2::zeros((3, 5)), vec![], cfg),
        Err(NudgeError::DimensionMismatch { .. })
    ));
    let mut vqn = vq.clone();
    vqn[[1, 1]] = f32::NAN;
    assert!(matches!(
        FitPass::new(ms.clone(), vqn, vr.clone(), cfg),
        Err(NudgeError::NonFinite { index: 1, .. })
    ));
    let mut bad = vr.clone();
    bad.push(Qrel {
        query: 1000,
        record: 0,
        grade: 1.0,
    });
    assert!(matches!(
        FitPass::new(ms.clone(), vq.clone(), bad, cfg),
        Err(NudgeError::InvalidParameter { .. })
    ));
    for sel in [
        Selection::Best(Metric::Ndcg(0)),
        Selection::Fixed(-1.0),
        Selection::Fixed(5.0),
        Selection::Fixed(f64::NAN),
    ] {
        assert!(matches!(
            FitPass::new(
                ms.clone(),
                vq.clone(),
                vr.clone(),
                FitConfig::new(Method::NudgeN, sel)
            ),
            Err(NudgeError::InvalidParameter { .. })
        ));
    }
    assert!(FitPass::new(
        ms.clone(),
        vq.clone(),
        vr.clone(),
        FitConfig::new(Method::NudgeM, Selection::Fixed(5.0))
    )
    .is_ok());
    let mut unsorted = ms.clone();
    unsorted.keys.swap(0, 1);
    assert!(matches!(
        FitPass::new(unsorted, vq.clone(), vr.clone(), cfg),
        Err(NudgeError::InvalidParameter { .. })
    ));
    let empty = MovingSet {
        keys: vec![],
        g: Array2::zeros((0, 4)),
    };
    assert!(matches!(
        FitPass::new(empty, vq.clone(), vr.clone(), cfg),
        Err(NudgeError::Empty { .. })
    ));
    let mut gn = ms.clone();
    gn.g[[0, 0]] = f32::INFINITY;
    assert!(matches!(
        FitPass::new(gn, vq.clone(), vr.clone(), cfg),
        Err(NudgeError::NonFinite { .. })
    ));
    let short = MovingSet {
        keys: ms.keys.clone(),
        g: ms.g.slice(s![1.., ..]).to_owned(),
    };
    assert!(matches!(
        FitPass::new(short, vq.clone(), vr.clone(), cfg),
        Err(NudgeError::DimensionMismatch { .. })
    ));

    // batches
    let mut fp = new();
    assert!(matches!(
        fp.push_batch(&d.keys[..3], d.corpus.slice(s![..4, ..]), &mut h),
        Err(NudgeError::DimensionMismatch { .. })
    ));
    assert!(matches!(
        fp.push_batch(&[1], Array2::<f32>::zeros((1, 3)).view(), &mut h),
        Err(NudgeError::DimensionMismatch { .. })
    ));
    let mut c = d.corpus.slice(s![..5, ..]).to_owned();
    c[[4, 2]] = f32::NAN;
    assert_eq!(
        fp.push_batch(&d.keys[..5], c.view(), &mut h),
        Err(NudgeError::NonFinite {
            what: "corpus batch".into(),
            index: 4
        })
    );
    assert!(matches!(
        fp.push_batch(&[7, 7], d.corpus.slice(s![..2, ..]), &mut h),
        Err(NudgeError::InvalidParameter { name: "keys", .. })
    ));
    // a zero vector for a moving record
    let mk = ms.keys[0];
    assert_eq!(
        fp.push_batch(&[mk], Array2::<f32>::zeros((1, 4)).view(), &mut h),
        Err(NudgeError::ZeroVector {
            what: "corpus batch".into(),
            index: 0
        })
    );
    // zero vector of a static record is fine (scores 0)
    let sk = d
        .keys
        .iter()
        .copied()
        .find(|k| ms.position(*k).is_none())
        .unwrap();
    fp.push_batch(&[sk], Array2::<f32>::zeros((1, 4)).view(), &mut h)
        .unwrap();
    // moving key twice across batches
    let row = d.keys.iter().position(|&k| k == mk).unwrap();
    fp.push_batch(&[mk], d.corpus.slice(s![row..row + 1, ..]), &mut h)
        .unwrap();
    assert!(matches!(
        fp.push_batch(&[mk], d.corpus.slice(s![row..row + 1, ..]), &mut h),
        Err(NudgeError::InvalidParameter { name: "keys", .. })
    ));
    // unseen moving records
    assert!(matches!(
        fp.validation_metric_at(0.1),
        Err(NudgeError::UnknownRecord { .. })
    ));
    let missing = ms.keys[1];
    assert_eq!(
        fp.finish(&mut h).err(),
        Some(NudgeError::UnknownRecord {
            what: "moving record".into(),
            key: missing
        })
    );

    // a static key pushed twice with different vectors is caught where it matters
    let mut fp = new();
    fp.push_batch(&d.keys, d.corpus.view(), &mut h).unwrap();
    // two more copies of static key sk pointing exactly at a validation query: both enter
    // that query's static top-10
    let qrow = vr.iter().find(|r| r.grade > 0.0).unwrap().query as usize;
    let v = vq.slice(s![qrow..qrow + 1, ..]).to_owned();
    fp.push_batch(&[sk], v.view(), &mut h).unwrap();
    fp.push_batch(&[sk], (&v * 2.0).view(), &mut h).unwrap();
    let r = fp.finish(&mut h);
    assert!(
        matches!(r, Err(NudgeError::InvalidParameter { name: "keys", .. })),
        "{:?}",
        r.err()
    );

    // gamma out of range
    let mut fp = new();
    fp.push_batch(&d.keys, d.corpus.view(), &mut h).unwrap();
    assert!(matches!(
        fp.validation_metric_at(4.5),
        Err(NudgeError::InvalidParameter { .. })
    ));
    assert!(fp.validation_metric_at(4.0).is_ok());
}

#[test]
fn cancellation_in_pass_and_in_gamma_search() {
    let d = make_data(51, 3000, 8, 300, true);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    // pass: cancelled on the 3rd check
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_labelled).unwrap();
    let (vq, vr) = val_parts(&d);
    let mut fp = FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap();
    let mut calls = 0;
    let mut phases: Vec<String> = Vec::new();
    let res = {
        let mut ci = || {
            calls += 1;
            if calls >= 3 {
                Err(NudgeError::Cancelled)
            } else {
                Ok(())
            }
        };
        let mut pr = |p: Progress<'_>| phases.push(p.phase.to_string());
        let mut h = Hooks::new(None, &mut ci, &mut pr);
        let mut r = Ok(());
        for c0 in (0..3000).step_by(500) {
            r = fp.push_batch(
                &d.keys[c0..c0 + 500],
                d.corpus.slice(s![c0..c0 + 500, ..]),
                &mut h,
            );
            if r.is_err() {
                break;
            }
        }
        r
    };
    assert_eq!(res, Err(NudgeError::Cancelled));
    assert_eq!(calls, 3);
    assert!(phases.iter().all(|p| p == "scanning corpus"));

    // gamma search: count the checks of a full run, then cancel at each of them
    let total = {
        let fp = fit_pass(&d, cfg, 3000);
        let mut calls = 0;
        let mut ci = || {
            calls += 1;
            Ok(())
        };
        let mut pr = |_: Progress<'_>| {};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut h = Hooks::new(Some(&pool), &mut ci, &mut pr);
        fp.finish(&mut h).unwrap();
        calls
    };
    assert!(total >= 3, "{total}");
    for stop in [2, total / 2, total] {
        let fp = fit_pass(&d, cfg, 3000);
        let mut calls = 0;
        let mut ci = || {
            calls += 1;
            if calls >= stop {
                Err(NudgeError::Cancelled)
            } else {
                Ok(())
            }
        };
        let mut pr = |_: Progress<'_>| {};
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut h = Hooks::new(Some(&pool), &mut ci, &mut pr);
        assert_eq!(
            fp.finish(&mut h).err(),
            Some(NudgeError::Cancelled),
            "stop at {stop}"
        );
    }
}

#[test]
fn results_do_not_depend_on_batching_or_threads() {
    let d = make_data(61, 500, 8, 120, false);
    let cfg = FitConfig {
        method: Method::NudgeM,
        selection: Selection::Best(Metric::Mrr(10)),
        negative_rule: NegativeRule::Skip,
    };
    let a = fit_pass(&d, cfg, 500).finish(&mut Hooks::noop()).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    let b = fit_pass(&d, cfg, 17)
        .finish(&mut Hooks::noop_on(&pool))
        .unwrap();
    assert_eq!(a, b);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    fn matrix(rows: usize, cols: usize, vals: &[f32]) -> Array2<f32> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            vals[(i * cols + j) % vals.len().max(1)]
        })
    }

    fn val() -> impl Strategy<Value = f32> {
        prop_oneof![
            8 => -2.0f32..2.0,
            1 => Just(0.0f32),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(1e30f32),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn never_panics(
            n in 0usize..12, dim in 0usize..4, nq in 0usize..6, k in 0usize..5,
            vals in proptest::collection::vec(val(), 1..40),
            rels in proptest::collection::vec((0u32..7, 0u64..14, -1.0f64..3.0), 0..12),
            gamma in -1.0f64..5.0, m_method in any::<bool>(), sel in 0usize..4,
        ) {
            let corpus = matrix(n, dim, &vals);
            let queries = matrix(nq, dim, &vals[vals.len() / 2..]);
            let keys: Vec<u64> = (0..n as u64).collect();
            let method = if m_method { Method::NudgeM } else { Method::NudgeN };
            // top-k
            for dist in [Distance::InnerProduct, Distance::Cosine, Distance::L2] {
                if let Ok(mut tk) = TopK::new(queries.clone(), k, dist) {
                    let _ = tk.push_batch(&keys, corpus.view(), &mut Hooks::noop());
                    let _ = tk.finish();
                }
            }
            let _ = crate::knn::dot_rows(corpus.view(), queries.view());
            // metrics
            let ranked: Vec<(u64, f32)> = keys.iter().map(|&kk| (kk, vals[kk as usize % vals.len()])).collect();
            let relv: Vec<(u64, f64)> = rels.iter().map(|r| (r.1, r.2)).collect();
            let _ = crate::metrics::evaluate(&ranked, &relv, k);
            // apply
            let _ = apply(method, gamma, corpus.view(), corpus.view(), NegativeRule::Skip);
            // gradients + fit
            let qrels: Vec<Qrel> = rels.iter().map(|r| Qrel { query: r.0, record: r.1, grade: r.2 }).collect();
            let train: Vec<usize> = (0..nq).filter(|i| i % 2 == 0).collect();
            let valr: Vec<usize> = (0..nq).filter(|i| i % 2 == 1).collect();
            if let Ok(ms) = gradients(queries.view(), &qrels, &train, (n as u64).max(1)) {
                let vq = queries.select(Axis(0), &valr);
                let vqrels: Vec<Qrel> = qrels.iter().filter(|q| (q.query as usize) < valr.len()).copied().collect();
                let selection = match sel {
                    0 => Selection::Fixed(gamma),
                    1 => Selection::Parity,
                    2 => Selection::Best(Metric::Ndcg(k)),
                    _ => Selection::Best(Metric::Top1),
                };
                if let Ok(mut fp) = FitPass::new(ms, vq, vqrels, FitConfig::new(method, selection)) {
                    let half = n / 2;
                    let _ = fp.push_batch(&keys[..half], corpus.slice(s![..half, ..]), &mut Hooks::noop());
                    let _ = fp.push_batch(&keys[half..], corpus.slice(s![half.., ..]), &mut Hooks::noop());
                    let _ = fp.validation_metric_at(gamma);
                    let _ = fp.finish(&mut Hooks::noop());
                }
            }
        }
    }
}
