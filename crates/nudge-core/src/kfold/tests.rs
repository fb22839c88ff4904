use super::*;
use crate::nudge::NegativeRule;
use crate::partial::ShardPass;
use crate::split::permutation;
use crate::testutil::Rng;

/// Corpus rows keyed by row; labelled keys are `0..n_lab`. Queries sit near their relevant
/// records; some queries have only grade-0 judgements, some rows have no judgement at all, and
/// records labelled by a single query (static in that query's fold) are common.
struct Data {
    corpus: Array2<f32>,
    queries: Array2<f32>,
    qrels: Vec<Qrel>,
    n_lab: u64,
}

fn make_data(seed: u64, n: usize, dim: usize, nq: usize) -> Data {
    let mut rng = Rng::new(seed);
    let mut corpus = rng.matrix(n, dim);
    for mut r in corpus.outer_iter_mut() {
        let f = 1.25 + 0.75 * rng.unif();
        r.iter_mut().for_each(|x| *x *= f);
    }
    let n_lab = n / 3;
    let mut queries = rng.matrix(nq, dim);
    let mut qrels = Vec::new();
    for qi in 0..nq {
        match rng.below(12) {
            0 => continue, // no judgement: not a labelled query
            1 => {
                // judged, nothing relevant
                qrels.push(Qrel {
                    query: qi as u32,
                    record: rng.below(n_lab) as u64,
                    grade: 0.0,
                });
                continue;
            }
            _ => {}
        }
        for _ in 0..1 + rng.below(3) {
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
        if rng.below(8) == 0 {
            qrels.push(Qrel {
                query: qi as u32,
                record: rng.below(n_lab) as u64,
                grade: 0.0,
            });
        }
    }
    Data {
        corpus,
        queries,
        qrels,
        n_lab: n_lab as u64,
    }
}

fn keys(d: &Data) -> Vec<u64> {
    (0..d.corpus.nrows() as u64).collect()
}

fn kfold(d: &Data, k: usize, seed: u32, cfg: FitConfig, batch: usize) -> FoldOutcome {
    let mut kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, k, seed, cfg).unwrap();
    let order = permutation(d.corpus.nrows(), 77);
    let keys = keys(d);
    for chunk in order.chunks(batch) {
        let ks: Vec<u64> = chunk.iter().map(|&i| keys[i]).collect();
        let v = d.corpus.select(Axis(0), chunk);
        kp.push_batch(&ks, v.view(), &mut Hooks::noop()).unwrap();
    }
    assert!(kp.all_labelled_seen());
    assert_eq!(kp.rows_seen(), d.corpus.nrows() as u64);
    kp.finish(&mut Hooks::noop()).unwrap()
}

/// Independent widest-run rule: the middle of the longest run of values within 1e-12 of the
/// maximum, the first such run on a tie.
fn brute_pick(v: &[f64]) -> usize {
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let tol = 1e-12 * max.abs().max(1.0);
    let mut best: Option<(usize, usize)> = None; // (start, length)
    let mut i = 0;
    while i < v.len() {
        if v[i] >= max - tol {
            let s = i;
            while i < v.len() && v[i] >= max - tol {
                i += 1;
            }
            if best.is_none_or(|b| i - s > b.1) {
                best = Some((s, i - s));
            }
        } else {
            i += 1;
        }
    }
    let (s, len) = best.unwrap();
    s + (len - 1) / 2
}

struct Brute {
    gamma: f64,
    curve: Vec<(f64, f64)>,
    fold_curves: Vec<Vec<f64>>,
    keys: Vec<u64>,
    vectors: Array2<f32>,
    changed: Vec<bool>,
}

/// K separate full passes, each a FitPass fed every row with G from the other folds and the
/// fold as validation; the metric at each grid point through `validation_metric_at`.
fn brute(d: &Data, k: usize, seed: u32, cfg: FitConfig) -> Brute {
    let Selection::Best(metric) = cfg.selection else {
        unreachable!()
    };
    let mut labelled: Vec<usize> = d.qrels.iter().map(|q| q.query as usize).collect();
    labelled.sort_unstable();
    labelled.dedup();
    let np = labelled.len();
    let p = permutation(np, seed);
    let folds: Vec<Vec<usize>> = (0..k)
        .map(|f| (f..np).step_by(k).map(|i| labelled[p[i]]).collect())
        .collect();
    let keys = keys(d);
    let passes: Vec<FitPass> = (0..k)
        .map(|f| {
            let train: Vec<usize> = (0..k)
                .filter(|&g| g != f)
                .flat_map(|g| folds[g].clone())
                .collect();
            let ms = gradients(d.queries.view(), &d.qrels, &train, d.n_lab).unwrap();
            let vq = d.queries.select(Axis(0), &folds[f]);
            let vr: Vec<Qrel> = d
                .qrels
                .iter()
                .filter_map(|q| {
                    folds[f]
                        .iter()
                        .position(|&r| r == q.query as usize)
                        .map(|i| Qrel {
                            query: i as u32,
                            ..*q
                        })
                })
                .collect();
            let mut fp = FitPass::new(ms, vq, vr, cfg).unwrap();
            for (ks, v) in keys.chunks(97).zip(d.corpus.axis_chunks_iter(Axis(0), 97)) {
                fp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
            }
            fp
        })
        .collect();
    let mut hi: f64 = match (cfg.method, cfg.negative_rule) {
        (Method::NudgeN, NegativeRule::Skip) => 2.0,
        (Method::NudgeN, NegativeRule::Move) => 4.0,
        (Method::NudgeM, _) => 2.0,
    };
    let (gamma, curve, fold_curves) = loop {
        let points = match cfg.method {
            Method::NudgeN => 1000 * hi as usize / 2 + 1,
            Method::NudgeM => 1001,
        };
        let grid: Vec<f64> = (0..points)
            .map(|i| hi * i as f64 / (points - 1) as f64)
            .collect();
        let fc: Vec<Vec<f64>> = passes
            .iter()
            .map(|fp| {
                grid.iter()
                    .map(|&g| fp.validation_metric_at(g).unwrap())
                    .collect()
            })
            .collect();
        let _ = metric;
        let mean: Vec<f64> = (0..points)
            .map(|i| {
                let mut s = 0.0;
                for c in &fc {
                    s += c[i];
                }
                s / k as f64
            })
            .collect();
        let mid = brute_pick(&mean);
        let top = mean.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let touches = mean[points - 1] >= top - 1e-12 * top.abs().max(1.0)
            && (mid..points).all(|i| mean[i] >= top - 1e-12 * top.abs().max(1.0));
        if cfg.method == Method::NudgeM && touches && hi < 16.0 {
            hi *= 2.0;
            continue;
        }
        break (
            grid[mid],
            grid.into_iter().zip(mean).collect::<Vec<_>>(),
            fc,
        );
    };
    let all = gradients(d.queries.view(), &d.qrels, &labelled, d.n_lab).unwrap();
    let rows: Vec<usize> = all.keys.iter().map(|&k| k as usize).collect();
    let orig = d.corpus.select(Axis(0), &rows);
    let (vectors, changed) = apply(
        cfg.method,
        gamma,
        orig.view(),
        all.g.view(),
        cfg.negative_rule,
    )
    .unwrap();
    Brute {
        gamma,
        curve,
        fold_curves,
        keys: all.keys,
        vectors,
        changed,
    }
}

fn check_same(got: &FoldOutcome, want: &Brute, what: &str) {
    assert_eq!(got.gamma, want.gamma, "{what}");
    assert_eq!(got.curve, want.curve, "{what}");
    assert_eq!(got.fold_curves, want.fold_curves, "{what}");
    assert_eq!(got.fit.keys, want.keys, "{what}");
    assert_eq!(got.fit.changed, want.changed, "{what}");
    let worst = got
        .fit
        .vectors
        .iter()
        .zip(&want.vectors)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "{what}: {worst}");
    assert_eq!(got.cv_metric_before, want.curve[0].1, "{what}");
    let at = want.curve.iter().find(|c| c.0 == want.gamma).unwrap().1;
    assert_eq!(got.cv_metric_after, at, "{what}");
    assert_eq!(got.fit.validation_after, Some(at));
    assert_eq!(got.fit.gamma, got.gamma);
}

#[test]
fn kfold_equals_brute_force() {
    let mut cases = 0;
    let mut moved = 0;
    for seed in [1u64, 2, 3] {
        let d = make_data(seed, 420, 10, 60);
        for (method, rule) in [
            (Method::NudgeN, NegativeRule::Skip),
            (Method::NudgeN, NegativeRule::Move),
            (Method::NudgeM, NegativeRule::Skip),
        ] {
            for k in [2usize, 3, 5] {
                let metric =
                    [Metric::Ndcg(10), Metric::Recall(5), Metric::Mrr(10)][(seed as usize + k) % 3];
                let cfg = FitConfig {
                    method,
                    selection: Selection::Best(metric),
                    negative_rule: rule,
                };
                let fold_seed = seed as u32 * 10 + k as u32;
                let want = brute(&d, k, fold_seed, cfg);
                let got = kfold(&d, k, fold_seed, cfg, 1 + (seed as usize * 37) % 150);
                let what = format!("seed {seed} {method:?} {rule:?} k={k} {metric:?}");
                check_same(&got, &want, &what);
                assert_eq!(got.folds.len(), k);
                assert!(got.fold_evaluated.iter().all(|&n| n > 0));
                cases += 1;
                moved += usize::from(got.gamma > 0.0);
            }
        }
    }
    assert_eq!(cases, 27);
    // the data must exercise real choices
    assert!(moved >= 20, "{moved}");
}

#[test]
fn labelled_records_static_in_their_own_fold() {
    // the situation the exact merge handles: a record labelled only by queries of one fold is
    // static there, moving in the others
    let d = make_data(1, 420, 10, 60);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 7, cfg).unwrap();
    let fold_of = |q: u32| kp.folds().iter().position(|f| f.contains(&(q as usize)));
    let mut only_one = 0;
    for &key in kp.labelled_keys() {
        let fs: Vec<_> = d
            .qrels
            .iter()
            .filter(|q| q.record == key && q.grade > 0.0)
            .map(|q| fold_of(q.query))
            .collect();
        if fs.windows(2).all(|w| w[0] == w[1]) {
            only_one += 1;
        }
    }
    assert!(only_one > 20, "{only_one}");
    assert!(kp.labelled_keys().len() < d.n_lab as usize); // and labelled-range keys that never move
}

#[test]
fn folds_follow_the_documented_recipe() {
    let d = make_data(2, 90, 6, 40);
    let cfg = FitConfig::new(Method::NudgeM, Selection::Best(Metric::Ndcg(10)));
    let kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 4, 3, cfg).unwrap();
    let mut labelled: Vec<usize> = d.qrels.iter().map(|q| q.query as usize).collect();
    labelled.sort_unstable();
    labelled.dedup();
    assert!(labelled.len() < 40); // some rows have no judgement
    let want: Vec<Vec<usize>> = crate::split::folds(labelled.len(), 4, 3)
        .unwrap()
        .into_iter()
        .map(|f| f.into_iter().map(|i| labelled[i]).collect())
        .collect();
    assert_eq!(kp.folds(), &want[..]);
}

#[test]
fn one_scan_serves_every_fold() {
    // each row is pushed exactly once; the number of push_batch calls does not depend on K
    let d = make_data(3, 300, 8, 50);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let mut counts = Vec::new();
    for k in [2usize, 5] {
        let mut kp =
            KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, k, 1, cfg).unwrap();
        let mut pushed = vec![0u32; d.corpus.nrows()];
        let mut calls = 0;
        let keys = keys(&d);
        for (ks, v) in keys.chunks(64).zip(d.corpus.axis_chunks_iter(Axis(0), 64)) {
            kp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
            ks.iter().for_each(|&k| pushed[k as usize] += 1);
            calls += 1;
        }
        assert!(pushed.iter().all(|&c| c == 1));
        // a labelled record pushed again is rejected
        let lk = kp.labelled_keys()[0];
        let row = d.corpus.select(Axis(0), &[lk as usize]);
        assert!(matches!(
            kp.push_batch(&[lk], row.view(), &mut Hooks::noop()),
            Err(NudgeError::InvalidParameter { name: "keys", .. })
        ));
        kp.finish(&mut Hooks::noop()).unwrap();
        counts.push(calls);
    }
    assert_eq!(counts[0], counts[1]);
}

#[test]
fn missing_labelled_record_is_unknown() {
    let d = make_data(3, 300, 8, 50);
    let cfg = FitConfig::new(Method::NudgeM, Selection::Best(Metric::Ndcg(10)));
    let mut kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 1, cfg).unwrap();
    let missing = kp.labelled_keys()[2];
    let rows: Vec<usize> = (0..300).filter(|&r| r as u64 != missing).collect();
    let ks: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
    kp.push_batch(
        &ks,
        d.corpus.select(Axis(0), &rows).view(),
        &mut Hooks::noop(),
    )
    .unwrap();
    assert!(!kp.all_labelled_seen());
    assert_eq!(
        kp.finish(&mut Hooks::noop()).unwrap_err(),
        NudgeError::UnknownRecord {
            what: "moving record".into(),
            key: missing
        }
    );
}

#[test]
fn bad_input_errors() {
    let d = make_data(4, 120, 6, 30);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let new = |q: &Array2<f32>, r: &[Qrel], k: usize, cfg: FitConfig| {
        KFoldPass::new(q.clone(), r.to_vec(), d.n_lab, k, 0, cfg).map(|_| ())
    };
    let folds_err = |r: Result<()>, needle: &str| match r {
        Err(NudgeError::InvalidParameter {
            name: "folds",
            message,
        }) => assert!(message.contains(needle), "{message}"),
        other => panic!("{other:?}"),
    };
    folds_err(new(&d.queries, &d.qrels, 0, cfg), "at least 2 folds");
    folds_err(new(&d.queries, &d.qrels, 1, cfg), "at least 2 folds");
    let n_lab_q = {
        let mut v: Vec<u32> = d.qrels.iter().map(|q| q.query).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    folds_err(
        new(&d.queries, &d.qrels, n_lab_q + 1, cfg),
        &format!("there are {n_lab_q}"),
    );
    // 4 labelled queries, only query 0 has a relevant record: with 2 folds one fold has none
    let q = d.queries.slice(ndarray::s![..4, ..]).to_owned();
    let r = vec![
        Qrel {
            query: 0,
            record: 1,
            grade: 1.0,
        },
        Qrel {
            query: 1,
            record: 2,
            grade: 0.0,
        },
        Qrel {
            query: 2,
            record: 3,
            grade: 0.0,
        },
        Qrel {
            query: 3,
            record: 3,
            grade: 0.0,
        },
    ];
    folds_err(new(&q, &r, 2, cfg), "has no query with a relevant record");
    // other selections
    for sel in [Selection::Parity, Selection::Fixed(0.1)] {
        let c = FitConfig::new(Method::NudgeN, sel);
        assert!(matches!(
            new(&d.queries, &d.qrels, 3, c),
            Err(NudgeError::InvalidParameter {
                name: "selection",
                ..
            })
        ));
    }
    // bad metric, bad qrels, bad queries
    let c = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(0)));
    assert!(new(&d.queries, &d.qrels, 3, c).is_err());
    let mut r = d.qrels.clone();
    r[0].query = 30;
    assert!(matches!(
        new(&d.queries, &r, 3, cfg),
        Err(NudgeError::InvalidParameter { name: "qrels", .. })
    ));
    let mut r = d.qrels.clone();
    r[0].record = d.n_lab;
    assert!(matches!(
        new(&d.queries, &r, 3, cfg),
        Err(NudgeError::InvalidParameter { name: "qrels", .. })
    ));
    let mut q = d.queries.clone();
    q[[d.qrels[0].query as usize, 2]] = f32::NAN;
    assert!(matches!(
        new(&q, &d.qrels, 3, cfg),
        Err(NudgeError::NonFinite { .. })
    ));
    assert!(matches!(
        new(&d.queries, &[], 2, cfg),
        Err(NudgeError::Empty { .. })
    ));
}

#[test]
fn sharded_scan_equals_single_scan() {
    let d = make_data(5, 400, 8, 60);
    for method in [Method::NudgeN, Method::NudgeM] {
        let cfg = FitConfig::new(method, Selection::Best(Metric::Ndcg(10)));
        let want = kfold(&d, 3, 9, cfg, 400);
        let mut kp =
            KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 9, cfg).unwrap();
        let spec = ShardSpec::from_bytes(&kp.shard_spec().to_bytes()).unwrap();
        let mut rng = Rng::new(3);
        let mut rows: Vec<Vec<usize>> = vec![Vec::new(); 3];
        for r in 0..d.corpus.nrows() {
            rows[rng.below(3)].push(r);
        }
        for rows in rows {
            let mut sp = ShardPass::new(spec.clone()).unwrap();
            let ks: Vec<u64> = rows.iter().map(|&r| r as u64).collect();
            sp.push_batch(
                &ks,
                d.corpus.select(Axis(0), &rows).view(),
                &mut Hooks::noop(),
            )
            .unwrap();
            kp.push_partial(Partial::from_bytes(&sp.finish().to_bytes()).unwrap())
                .unwrap();
        }
        let got = kp.finish(&mut Hooks::noop()).unwrap();
        assert_eq!(got.gamma, want.gamma);
        assert_eq!(got.curve, want.curve);
        assert_eq!(got.fit.changed, want.fit.changed);
        assert_eq!(got.fit.vectors, want.fit.vectors);
    }
}

#[test]
fn cancellation_is_returned() {
    let d = make_data(6, 300, 8, 50);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    for stop_at in [1usize, 2, 4, 8] {
        let mut kp =
            KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 1, cfg).unwrap();
        let keys = keys(&d);
        kp.push_batch(&keys, d.corpus.view(), &mut Hooks::noop())
            .unwrap();
        let mut n = 0;
        let mut check = || {
            n += 1;
            if n >= stop_at {
                Err(NudgeError::Cancelled)
            } else {
                Ok(())
            }
        };
        let mut progress = |_: crate::exec::Progress<'_>| {};
        let mut h = Hooks::new(None, &mut check, &mut progress);
        assert_eq!(kp.finish(&mut h).unwrap_err(), NudgeError::Cancelled);
    }
}

/// Cost of K-fold selection against one-fold selection (not a test; run with
/// `cargo test -p nudge-core --release -- --ignored --nocapture kfold_timing`).
#[test]
#[ignore]
fn kfold_timing() {
    use std::time::Instant;
    let (n, dim, nq) = (5000, 384, 1000);
    let mut rng = Rng::new(42);
    let corpus = rng.matrix(n, dim);
    let n_lab = 2000usize;
    let mut queries = rng.matrix(nq, dim);
    let mut qrels = Vec::new();
    for qi in 0..nq {
        for _ in 0..1 + rng.below(3) {
            let r = rng.below(n_lab);
            qrels.push(Qrel {
                query: qi as u32,
                record: r as u64,
                grade: 1.0,
            });
            let mut row = queries.row_mut(qi);
            row.scaled_add(0.12, &corpus.row(r));
        }
    }
    let keys: Vec<u64> = (0..n as u64).collect();
    for method in [Method::NudgeN, Method::NudgeM] {
        let cfg = FitConfig::new(method, Selection::Best(Metric::Ndcg(10)));
        // one fold: 80% train / 20% validation (the size of one of 5 folds), and 90/10
        for frac in [0.2, 0.1] {
            let (train, val) = crate::split::split(nq, frac, 0).unwrap();
            let t0 = Instant::now();
            let ms = gradients(queries.view(), &qrels, &train, n_lab as u64).unwrap();
            let vq = queries.select(Axis(0), &val);
            let vr: Vec<Qrel> = qrels
                .iter()
                .filter_map(|q| {
                    val.iter()
                        .position(|&v| v == q.query as usize)
                        .map(|i| Qrel {
                            query: i as u32,
                            ..*q
                        })
                })
                .collect();
            let mut fp = FitPass::new(ms, vq, vr, cfg).unwrap();
            for (ks, v) in keys
                .chunks(1000)
                .zip(corpus.axis_chunks_iter(Axis(0), 1000))
            {
                fp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
            }
            let t1 = Instant::now();
            let out = fp.finish(&mut Hooks::noop()).unwrap();
            let t2 = Instant::now();
            eprintln!(
                "{method:?} one fold (validation {frac}): pass {:.3} s, finish {:.3} s, gamma {}",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                out.gamma
            );
        }
        for k in [2usize, 5] {
            let t0 = Instant::now();
            let mut kp =
                KFoldPass::new(queries.clone(), qrels.clone(), n_lab as u64, k, 0, cfg).unwrap();
            for (ks, v) in keys
                .chunks(1000)
                .zip(corpus.axis_chunks_iter(Axis(0), 1000))
            {
                kp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
            }
            let t1 = Instant::now();
            let out = kp.finish(&mut Hooks::noop()).unwrap();
            let t2 = Instant::now();
            eprintln!(
                "{method:?} K={k}: pass {:.3} s, finish {:.3} s, gamma {}, cv {:.4} -> {:.4}",
                (t1 - t0).as_secs_f64(),
                (t2 - t1).as_secs_f64(),
                out.gamma,
                out.cv_metric_before,
                out.cv_metric_after
            );
        }
    }
}

/// `held_out`: gamma and curve of a FitPass with G from the training queries and the held-out
/// queries as validation; the update with G from all labelled queries.
#[test]
fn held_out_refit_equals_fit_pass_then_all_labels() {
    for (seed, method) in [(4u64, Method::NudgeN), (5, Method::NudgeM), (6, Method::NudgeN)] {
        let d = make_data(seed, 400, 10, 60);
        let cfg = FitConfig { method, selection: Selection::Best(Metric::Ndcg(10)), negative_rule: NegativeRule::Skip };
        let val: Vec<usize> = (0..d.queries.nrows()).filter(|r| r % 4 == 1).collect();
        let train: Vec<usize> = (0..d.queries.nrows()).filter(|r| r % 4 != 1).collect();
        let mut hp = KFoldPass::held_out(d.queries.clone(), d.qrels.clone(), d.n_lab, val.clone(), cfg).unwrap();
        // the plain held-out fit: G from the training queries, the others validate
        let ms = gradients(d.queries.view(), &d.qrels, &train, d.n_lab).unwrap();
        let vr: Vec<Qrel> = d
            .qrels
            .iter()
            .filter_map(|q| val.iter().position(|&r| r == q.query as usize).map(|i| Qrel { query: i as u32, ..*q }))
            .collect();
        let mut fp = FitPass::new(ms, d.queries.select(Axis(0), &val), vr, cfg).unwrap();
        let keys = keys(&d);
        for (ks, v) in keys.chunks(53).zip(d.corpus.axis_chunks_iter(Axis(0), 53)) {
            hp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
            fp.push_batch(ks, v, &mut Hooks::noop()).unwrap();
        }
        let got = hp.finish(&mut Hooks::noop()).unwrap();
        let want = fp.finish(&mut Hooks::noop()).unwrap();
        assert_eq!(got.gamma, want.gamma, "{method:?}");
        assert_eq!(got.curve, want.curve, "{method:?}");
        assert_eq!(got.fit.validation_after, want.validation_after);
        assert_eq!(got.fold_evaluated.len(), 1);
        let all: Vec<usize> = (0..d.queries.nrows()).collect();
        let ms_all = gradients(d.queries.view(), &d.qrels, &all, d.n_lab).unwrap();
        assert_eq!(got.fit.keys, ms_all.keys);
        let rows: Vec<usize> = ms_all.keys.iter().map(|&k| k as usize).collect();
        let (vectors, _) = apply(method, got.gamma, d.corpus.select(Axis(0), &rows).view(), ms_all.g.view(), NegativeRule::Skip).unwrap();
        let worst = got.fit.vectors.iter().zip(&vectors).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{method:?}: {worst}");
        assert!(got.fit.keys.len() > want.keys.len(), "every label moves records");
    }
}
