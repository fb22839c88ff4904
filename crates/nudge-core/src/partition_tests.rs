//! Partitioned searches (every query ranks only the rows of its own partition): a partitioned
//! pass over the union of the partitions equals the same pass over each partition's rows alone
//! (same keys), and a brute-force re-rank within the partition; gamma is chosen on the mean over
//! all queries.

use ndarray::{s, Array2, Axis};

use crate::exec::Hooks;
use crate::gamma::{widest_best_run, FitConfig, FitOutcome, FitPass, Selection};
use crate::gradient::{gradients, Qrel};
use crate::kfold::KFoldPass;
use crate::knn::{Distance, TopK, NO_PARTITION};
use crate::metrics::{Judged, Metric};
use crate::nudge::Method;
use crate::partial::{Partial, ShardPass, ShardSpec};
use crate::testutil::Rng;

/// Corpus rows of several partitions (interleaved in scan order, alike in distribution so
/// other partitions' rows would rank), queries of every partition labelling records of their
/// own. Labelled rows have keys `0..n_lab`, the others `n_lab + row`.
struct Data {
    corpus: Array2<f32>,
    keys: Vec<u64>,
    row_part: Vec<u32>,
    queries: Array2<f32>,
    query_part: Vec<u32>,
    qrels: Vec<Qrel>,
    n_lab: u64,
    train: Vec<usize>,
    val: Vec<usize>,
}

fn make_data(seed: u64, sizes: &[usize], nq_per: usize, dim: usize) -> Data {
    let mut rng = Rng::new(seed);
    let n: usize = sizes.iter().sum();
    let mut row_part: Vec<u32> = sizes
        .iter()
        .enumerate()
        .flat_map(|(p, &m)| std::iter::repeat_n(p as u32, m))
        .collect();
    // deal the rows of the partitions into one shuffled order
    for i in (1..n).rev() {
        let j = rng.below(i + 1);
        row_part.swap(i, j);
    }
    // two rows of no query's partition
    row_part[3] = NO_PARTITION;
    row_part[n - 2] = 77;
    let mut corpus = rng.matrix(n, dim);
    for mut r in corpus.outer_iter_mut() {
        let f = 1.25 + 0.75 * rng.unif();
        r.iter_mut().for_each(|x| *x *= f);
    }
    // every third row of each partition is labelled
    let mut labelled = vec![false; n];
    let mut count = vec![0usize; sizes.len()];
    for (i, &p) in row_part.iter().enumerate() {
        if (p as usize) < sizes.len() {
            labelled[i] = count[p as usize].is_multiple_of(3);
            count[p as usize] += 1;
        }
    }
    let mut keys = vec![0u64; n];
    let n_lab = labelled.iter().filter(|&&l| l).count() as u64;
    let mut next_lab = 0u64;
    for i in 0..n {
        keys[i] = if labelled[i] {
            next_lab += 1;
            next_lab - 1
        } else {
            n_lab + i as u64
        };
    }
    let rows_of = |p: u32| -> Vec<usize> { (0..n).filter(|&i| labelled[i] && row_part[i] == p).collect() };
    let nq = nq_per * sizes.len();
    let mut queries = Array2::<f32>::zeros((nq, dim));
    let mut query_part = Vec::with_capacity(nq);
    let mut qrels = Vec::new();
    for qi in 0..nq {
        let p = (qi % sizes.len()) as u32;
        query_part.push(p);
        let own = rows_of(p);
        for _ in 0..1 + rng.below(3) {
            let r = own[rng.below(own.len())];
            qrels.push(Qrel {
                query: qi as u32,
                record: keys[r],
                grade: 1.0 + rng.below(2) as f64,
            });
            let mut row = queries.row_mut(qi);
            row += &corpus.row(r);
        }
        queries.row_mut(qi).iter_mut().for_each(|x| *x += 0.9 * rng.unif());
    }
    let perm = crate::split::permutation(nq, seed as u32);
    let nv = nq / 3;
    Data {
        corpus,
        keys,
        row_part,
        queries,
        query_part,
        qrels,
        n_lab,
        train: perm[nv..].to_vec(),
        val: perm[..nv].to_vec(),
    }
}

impl Data {
    /// Validation queries (rows `val` restricted to `keep`) and their qrels renumbered.
    fn validation(&self, keep: &dyn Fn(usize) -> bool) -> (Vec<usize>, Array2<f32>, Vec<Qrel>) {
        let rows: Vec<usize> = self.val.iter().copied().filter(|&r| keep(r)).collect();
        let vq = self.queries.select(Axis(0), &rows);
        let vr = rows
            .iter()
            .enumerate()
            .flat_map(|(i, &q)| {
                self.qrels
                    .iter()
                    .filter(move |r| r.query as usize == q)
                    .map(move |r| Qrel { query: i as u32, ..*r })
            })
            .collect();
        (rows, vq, vr)
    }

    /// The partitioned pass over every row, in batches of 97.
    fn union_pass(&self, cfg: FitConfig) -> FitPass {
        let ms = gradients(self.queries.view(), &self.qrels, &self.train, self.n_lab).unwrap();
        let (rows, vq, vr) = self.validation(&|_| true);
        let parts: Vec<u32> = rows.iter().map(|&r| self.query_part[r]).collect();
        let mut fp = FitPass::new(ms, vq, vr, cfg).unwrap().partitioned(parts).unwrap();
        let n = self.corpus.nrows();
        for r0 in (0..n).step_by(97) {
            let r1 = (r0 + 97).min(n);
            fp.push_batch_in(
                &self.keys[r0..r1],
                self.corpus.slice(s![r0..r1, ..]),
                Some(&self.row_part[r0..r1]),
                &mut Hooks::noop(),
            )
            .unwrap();
        }
        fp
    }

    /// An unpartitioned pass over partition `p`'s rows alone, with its queries alone.
    fn separate_pass(&self, p: u32, cfg: FitConfig) -> Option<FitPass> {
        let train: Vec<usize> = self.train.iter().copied().filter(|&r| self.query_part[r] == p).collect();
        let ms = gradients(self.queries.view(), &self.qrels, &train, self.n_lab).unwrap();
        let (_, vq, vr) = self.validation(&|r| self.query_part[r] == p);
        let mut fp = FitPass::new(ms, vq, vr, cfg).ok()?;
        let rows: Vec<usize> = (0..self.corpus.nrows()).filter(|&i| self.row_part[i] == p).collect();
        let keys: Vec<u64> = rows.iter().map(|&i| self.keys[i]).collect();
        let vectors = self.corpus.select(Axis(0), &rows);
        fp.push_batch(&keys, vectors.view(), &mut Hooks::noop()).unwrap();
        Some(fp)
    }

    fn n_val_of(&self, p: u32) -> usize {
        self.val.iter().filter(|&&r| self.query_part[r] == p).count()
    }
}

/// Brute force: every validation query's metric from a full re-rank (f64) of its own
/// partition's rows, the moving records at their new vectors; the mean over all of them.
fn brute_mean(d: &Data, out: &FitOutcome, metric: Metric) -> f64 {
    // every record normalised, the changed ones at their new vectors; inner product in f64
    let mut vecs = d.corpus.clone();
    for mut r in vecs.outer_iter_mut() {
        let nn = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        r.iter_mut().for_each(|v| *v = (*v as f64 / nn) as f32);
    }
    for (i, &key) in d.keys.iter().enumerate() {
        if let Ok(m) = out.keys.binary_search(&key) {
            if out.changed[m] {
                vecs.row_mut(i).assign(&out.vectors.row(m));
            }
        }
    }
    let (rows, _, vr) = d.validation(&|_| true);
    let mut sum = 0.0;
    for (e, &r) in rows.iter().enumerate() {
        let q = d.queries.row(r);
        let mut scored: Vec<(f64, u64)> = (0..vecs.nrows())
            .filter(|&i| d.row_part[i] == d.query_part[r])
            .map(|i| {
                let v = vecs.row(i);
                let dot: f64 = q.iter().zip(v.iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
                (dot, d.keys[i])
            })
            .collect();
        scored.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(b.1.cmp(&a.1)));
        let rel: Vec<(u64, f64)> = vr.iter().filter(|x| x.query as usize == e).map(|x| (x.record, x.grade)).collect();
        let j = Judged::new(&rel);
        sum += j.value_ranked(metric, scored.iter().map(|x| x.1));
    }
    sum / rows.len() as f64
}

const P: u32 = 3;

fn sizes() -> Vec<usize> {
    vec![420, 260, 610]
}

#[test]
fn topk_ranks_only_the_query_partition() {
    let d = make_data(3, &sizes(), 20, 12);
    for dist in [Distance::Cosine, Distance::InnerProduct, Distance::L2] {
        let mut tk = TopK::new(d.queries.clone(), 7, dist)
            .unwrap()
            .with_partitions(d.query_part.clone())
            .unwrap();
        let n = d.corpus.nrows();
        for r0 in (0..n).step_by(300) {
            let r1 = (r0 + 300).min(n);
            tk.push_batch_in(&d.keys[r0..r1], d.corpus.slice(s![r0..r1, ..]), Some(&d.row_part[r0..r1]), &mut Hooks::noop())
                .unwrap();
        }
        let got = tk.finish();
        for p in 0..P {
            // the same search over the partition's rows and queries alone: bitwise equal
            let qrows: Vec<usize> = (0..d.queries.nrows()).filter(|&q| d.query_part[q] == p).collect();
            let rows: Vec<usize> = (0..n).filter(|&i| d.row_part[i] == p).collect();
            let keys: Vec<u64> = rows.iter().map(|&i| d.keys[i]).collect();
            let mut sep = TopK::new(d.queries.select(Axis(0), &qrows), 7, dist).unwrap();
            sep.push_batch(&keys, d.corpus.select(Axis(0), &rows).view(), &mut Hooks::noop()).unwrap();
            let want = sep.finish();
            for (i, &q) in qrows.iter().enumerate() {
                assert_eq!(got[q], want[i], "{dist} query {q}");
                // and a brute-force top-1 of the partition (inner product, f64)
                if dist == Distance::InnerProduct {
                    let qv = d.queries.row(q);
                    let best = rows
                        .iter()
                        .map(|&r| {
                            let s: f64 = qv.iter().zip(d.corpus.row(r).iter()).map(|(&a, &b)| a as f64 * b as f64).sum();
                            (s, d.keys[r])
                        })
                        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)))
                        .unwrap();
                    assert_eq!(got[q][0].0, best.1);
                    assert!((got[q][0].1 as f64 - best.0).abs() < 1e-4);
                }
            }
        }
    }
}

#[test]
fn partitioned_fit_equals_separate_fits() {
    let d = make_data(5, &sizes(), 24, 10);
    let n_val = d.val.len() as f64;
    for method in [Method::NudgeN, Method::NudgeM] {
        let cfg = FitConfig::new(method, Selection::Fixed(0.3));
        let union = d.union_pass(cfg);
        // the validation mean at any gamma is the query-weighted mean of the partitions'
        for g in [0.0, 0.1, 0.37, 1.2] {
            let u = union.validation_metric_at(g).unwrap();
            let mut want = 0.0;
            for p in 0..P {
                let sep = d.separate_pass(p, cfg).unwrap();
                want += sep.validation_metric_at(g).unwrap() * d.n_val_of(p) as f64;
            }
            assert!((u - want / n_val).abs() < 1e-12, "{method:?} gamma {g}: {u} vs {}", want / n_val);
        }
        // vectors at the fixed gamma: those of the separate fits, record by record
        let out = union.finish(&mut Hooks::noop()).unwrap();
        let mut n_moving = 0;
        for p in 0..P {
            let sep = d.separate_pass(p, cfg).unwrap().finish(&mut Hooks::noop()).unwrap();
            n_moving += sep.keys.len();
            for (i, key) in sep.keys.iter().enumerate() {
                let m = out.keys.binary_search(key).unwrap();
                assert_eq!(out.vectors.row(m), sep.vectors.row(i));
                assert_eq!(out.changed[m], sep.changed[i]);
            }
        }
        assert_eq!(n_moving, out.keys.len());
        let brute = brute_mean(&d, &out, Metric::Ndcg(10));
        assert!((out.validation_after.unwrap() - brute).abs() < 1e-9, "{method:?}");
    }
}

#[test]
fn joint_gamma_maximises_the_mean_over_all_queries() {
    let d = make_data(8, &sizes(), 24, 10);
    let n_val = d.val.len() as f64;
    for metric in [Metric::Ndcg(10), Metric::Recall(5)] {
        let cfg = FitConfig::new(Method::NudgeN, Selection::Best(metric));
        let out = d.union_pass(cfg).finish(&mut Hooks::noop()).unwrap();
        // the mean curve from the separate partitions' curves (the same grid)
        let mut mean = vec![0.0; out.curve.len()];
        for p in 0..P {
            let sep = d.separate_pass(p, cfg).unwrap().finish(&mut Hooks::noop()).unwrap();
            assert_eq!(sep.curve.len(), mean.len());
            for (m, (g, v)) in mean.iter_mut().zip(&sep.curve) {
                *m += v * d.n_val_of(p) as f64;
                let _ = g;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n_val);
        for ((g, v), m) in out.curve.iter().zip(&mean) {
            assert!((v - m).abs() < 1e-12, "gamma {g}: {v} vs {m}");
        }
        let (s0, e0) = widest_best_run(&mean);
        assert_eq!(out.gamma, out.curve[s0 + (e0 - s0) / 2].0);
        assert!((out.validation_after.unwrap() - brute_mean(&d, &out, metric)).abs() < 1e-9);
        // at gamma 0 nothing moves
        let zero = FitOutcome { changed: vec![false; out.keys.len()], ..out.clone() };
        assert!((out.validation_before.unwrap() - brute_mean(&d, &zero, metric)).abs() < 1e-9);
    }
}

#[test]
fn parity_selection_is_partitioned_too() {
    let d = make_data(13, &sizes(), 24, 10);
    for method in [Method::NudgeM, Method::NudgeN] {
        let cfg = FitConfig::new(method, Selection::Parity);
        let out = d.union_pass(cfg).finish(&mut Hooks::noop()).unwrap();
        let brute = brute_mean(&d, &out, Metric::Top1);
        assert!((out.validation_after.unwrap() - brute).abs() < 1e-9, "{method:?}");
    }
}

/// Per fold, its metric curve from separate per-partition passes (G from the other folds'
/// queries of the partition, the fold's queries of the partition), weighted by query count.
fn separate_fold_curve(d: &Data, fold: &[usize], all_rows: &[usize], cfg: FitConfig, evaluated: usize) -> Vec<f64> {
    let mut sum: Vec<f64> = Vec::new();
    for p in 0..P {
        let train: Vec<usize> =
            all_rows.iter().copied().filter(|r| !fold.contains(r) && d.query_part[*r] == p).collect();
        let val: Vec<usize> = fold.iter().copied().filter(|&r| d.query_part[r] == p).collect();
        if val.is_empty() {
            continue;
        }
        let ms = gradients(d.queries.view(), &d.qrels, &train, d.n_lab).unwrap();
        let vq = d.queries.select(Axis(0), &val);
        let vr: Vec<Qrel> = val
            .iter()
            .enumerate()
            .flat_map(|(i, &q)| d.qrels.iter().filter(move |r| r.query as usize == q).map(move |r| Qrel { query: i as u32, ..*r }))
            .collect();
        let mut fp = FitPass::new(ms, vq, vr, cfg).unwrap();
        let rows: Vec<usize> = (0..d.corpus.nrows()).filter(|&i| d.row_part[i] == p).collect();
        let keys: Vec<u64> = rows.iter().map(|&i| d.keys[i]).collect();
        fp.push_batch(&keys, d.corpus.select(Axis(0), &rows).view(), &mut Hooks::noop()).unwrap();
        let n_p = fp.n_validation_queries() as f64;
        let out = fp.finish(&mut Hooks::noop()).unwrap();
        sum.resize(out.curve.len(), 0.0);
        for (s, (_, v)) in sum.iter_mut().zip(&out.curve) {
            *s += v * n_p;
        }
    }
    sum.into_iter().map(|s| s / evaluated as f64).collect()
}

#[test]
fn partitioned_kfold_equals_separate_folds() {
    let d = make_data(21, &sizes(), 18, 8);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let all: Vec<usize> = (0..d.queries.nrows()).collect();
    let mut kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 4, cfg)
        .unwrap()
        .partitioned(d.query_part.clone())
        .unwrap();
    let n = d.corpus.nrows();
    for r0 in (0..n).step_by(250) {
        let r1 = (r0 + 250).min(n);
        kp.push_batch_in(&d.keys[r0..r1], d.corpus.slice(s![r0..r1, ..]), Some(&d.row_part[r0..r1]), &mut Hooks::noop())
            .unwrap();
    }
    let out = kp.finish(&mut Hooks::noop()).unwrap();
    for (f, fold) in out.folds.iter().enumerate() {
        let want = separate_fold_curve(&d, fold, &all, cfg, out.fold_evaluated[f]);
        assert_eq!(want.len(), out.fold_curves[f].len());
        for (i, (a, b)) in out.fold_curves[f].iter().zip(&want).enumerate() {
            assert!((a - b).abs() < 1e-12, "fold {f} point {i}: {a} vs {b}");
        }
    }
    // the final update: G from all labelled queries of each partition, at the chosen gamma
    let fixed = FitConfig::new(Method::NudgeN, Selection::Fixed(out.gamma));
    for p in 0..P {
        let rows: Vec<usize> = all.iter().copied().filter(|&r| d.query_part[r] == p).collect();
        let ms = gradients(d.queries.view(), &d.qrels, &rows, d.n_lab).unwrap();
        let mut fp = FitPass::new(ms, Array2::zeros((0, 8)), vec![], fixed).unwrap();
        let rr: Vec<usize> = (0..n).filter(|&i| d.row_part[i] == p).collect();
        let keys: Vec<u64> = rr.iter().map(|&i| d.keys[i]).collect();
        fp.push_batch(&keys, d.corpus.select(Axis(0), &rr).view(), &mut Hooks::noop()).unwrap();
        let sep = fp.finish(&mut Hooks::noop()).unwrap();
        for (i, key) in sep.keys.iter().enumerate() {
            let m = out.fit.keys.binary_search(key).unwrap();
            assert_eq!(out.fit.vectors.row(m), sep.vectors.row(i));
        }
    }
}

#[test]
fn sharded_partitioned_pass_equals_single_pass() {
    let d = make_data(34, &sizes(), 24, 10);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let single = d.union_pass(cfg).finish(&mut Hooks::noop()).unwrap();
    let mut coord = {
        let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_lab).unwrap();
        let (rows, vq, vr) = d.validation(&|_| true);
        let parts: Vec<u32> = rows.iter().map(|&r| d.query_part[r]).collect();
        FitPass::new(ms, vq, vr, cfg).unwrap().partitioned(parts).unwrap()
    };
    let mut spec = coord.shard_spec();
    assert!(spec.query_parts.is_some());
    let values: Vec<String> = (0..P).map(|p| format!("tenant {p}")).collect();
    spec.partition_values = values.clone();
    let spec = ShardSpec::from_bytes(&spec.to_bytes()).unwrap();
    let ids = spec.partition_ids();
    // three shards, each mapping its rows' values (one unknown value) to ids
    let mut partials = Vec::new();
    for shard in 0..3 {
        let mut sp = ShardPass::new(spec.clone()).unwrap();
        let rows: Vec<usize> = (0..d.corpus.nrows()).filter(|i| i % 3 == shard).collect();
        let value = |p: u32| values.get(p as usize).cloned().unwrap_or_else(|| "elsewhere".into());
        let parts: Vec<u32> =
            rows.iter().map(|&i| ids.get(value(d.row_part[i]).as_str()).copied().unwrap_or(NO_PARTITION)).collect();
        let keys: Vec<u64> = rows.iter().map(|&i| d.keys[i]).collect();
        sp.push_batch_in(&keys, d.corpus.select(Axis(0), &rows).view(), Some(&parts), &mut Hooks::noop()).unwrap();
        partials.push(Partial::from_bytes(&sp.finish().to_bytes()).unwrap());
    }
    let merged = partials.into_iter().reduce(|a, b| a.merge(b).unwrap()).unwrap();
    let merged = Partial::from_bytes(&merged.to_bytes()).unwrap();
    coord.push_partial(merged).unwrap();
    let sharded = coord.finish(&mut Hooks::noop()).unwrap();
    assert_eq!(sharded, single);
}

#[test]
fn partition_inputs_are_checked() {
    let d = make_data(2, &sizes(), 6, 4);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Fixed(0.2));
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_lab).unwrap();
    let (_, vq, vr) = d.validation(&|_| true);
    let nv = vq.nrows();
    let fp = FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap();
    assert!(fp.partitioned(vec![0; nv + 1]).is_err());
    let fp = FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap();
    assert!(fp.partitioned(vec![NO_PARTITION; nv]).is_err());
    let mut fp = FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap().partitioned(vec![0; nv]).unwrap();
    let v = d.corpus.slice(s![..4, ..]);
    // a partitioned pass needs row partitions of the batch's length
    assert!(fp.push_batch(&d.keys[..4], v, &mut Hooks::noop()).is_err());
    assert!(fp.push_batch_in(&d.keys[..4], v, Some(&[0, 1]), &mut Hooks::noop()).is_err());
    assert_eq!(fp.rows_seen(), 0);
    // an unpartitioned pass refuses them
    let mut fp = FitPass::new(ms, vq, vr, cfg).unwrap();
    assert!(fp.push_batch_in(&d.keys[..4], v, Some(&[0; 4]), &mut Hooks::noop()).is_err());
    // a spec whose query partitions are not listed values, or lists a value twice
    let spec = FitPass::new(gradients(d.queries.view(), &d.qrels, &d.train, d.n_lab).unwrap(), d.validation(&|_| true).1, d.validation(&|_| true).2, cfg)
        .unwrap()
        .partitioned(vec![1; nv])
        .unwrap()
        .shard_spec();
    assert!(ShardSpec::from_bytes(&spec.to_bytes()).is_err());
    let mut bad = spec.clone();
    bad.partition_values = vec!["a".into(), "a".into()];
    assert!(ShardSpec::from_bytes(&bad.to_bytes()).is_err());
    let mut good = spec;
    good.partition_values = vec!["a".into(), "b".into()];
    assert_eq!(ShardSpec::from_bytes(&good.to_bytes()).unwrap(), good);
}

#[test]
fn gamma_per_partition_equals_each_partition_searched_alone() {
    let d = make_data(17, &sizes(), 30, 10);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let joint = d.union_pass(cfg).finish(&mut Hooks::noop()).unwrap();
    let counts: Vec<usize> = (0..P).map(|p| d.n_val_of(p)).collect();
    let min = *counts.iter().max().unwrap();
    let out = d.union_pass(cfg).gamma_per_partition(min).unwrap().finish(&mut Hooks::noop()).unwrap();
    assert_eq!(out.gamma, joint.gamma);
    assert!(close_curves(&out.curve, &joint.curve));
    assert_eq!(out.partition_gammas.len(), P as usize);
    let mut weighted_after = 0.0;
    for pg in &out.partition_gammas {
        let p = pg.partition;
        assert_eq!(pg.queries, counts[p as usize]);
        assert_eq!(pg.own, counts[p as usize] >= min);
        let alone = d.separate_pass(p, cfg).unwrap().finish(&mut Hooks::noop()).unwrap();
        let want = if pg.own { alone.gamma } else { joint.gamma };
        assert_eq!(pg.gamma, want, "partition {p}");
        // its records: the vectors of the partition fitted alone at that gamma
        let fixed = d.separate_pass(p, FitConfig::new(Method::NudgeN, Selection::Fixed(want))).unwrap();
        let sep = fixed.finish(&mut Hooks::noop()).unwrap();
        for (i, key) in sep.keys.iter().enumerate() {
            let m = out.keys.binary_search(key).unwrap();
            assert_eq!(out.vectors.row(m), sep.vectors.row(i));
        }
        assert!((pg.after - sep.validation_after.unwrap()).abs() < 1e-12);
        weighted_after += pg.after * pg.queries as f64;
    }
    assert!(out.partition_gammas.iter().any(|c| c.own));
    let n: usize = counts.iter().sum();
    assert!((out.validation_after.unwrap() - weighted_after / n as f64).abs() < 1e-12);
    assert!(out.validation_after.unwrap() >= joint.validation_after.unwrap() - 1e-12);
    assert!((out.validation_after.unwrap() - brute_per_partition(&d, &out)).abs() < 1e-9);
    // too few queries everywhere: the joint fit
    let all_joint = d.union_pass(cfg).gamma_per_partition(n + 1).unwrap().finish(&mut Hooks::noop()).unwrap();
    assert!(all_joint.partition_gammas.iter().all(|c| !c.own && c.gamma == joint.gamma));
    assert_eq!(all_joint.vectors, joint.vectors);
    // only for a partitioned search of gamma
    let ms = gradients(d.queries.view(), &d.qrels, &d.train, d.n_lab).unwrap();
    let (_, vq, vr) = d.validation(&|_| true);
    assert!(FitPass::new(ms.clone(), vq.clone(), vr.clone(), cfg).unwrap().gamma_per_partition(1).is_err());
    let fixed = FitConfig::new(Method::NudgeN, Selection::Fixed(0.1));
    let nv = vq.nrows();
    assert!(FitPass::new(ms, vq, vr, fixed).unwrap().partitioned(vec![0; nv]).unwrap().gamma_per_partition(1).is_err());
}

fn close_curves(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-12)
}

/// The brute-force mean over validation queries with the outcome's vectors (each partition's
/// records at its own gamma already): the same as `brute_mean`.
fn brute_per_partition(d: &Data, out: &FitOutcome) -> f64 {
    brute_mean(d, out, Metric::Ndcg(10))
}

#[test]
fn kfold_gamma_per_partition() {
    let d = make_data(23, &sizes(), 24, 8);
    let cfg = FitConfig::new(Method::NudgeN, Selection::Best(Metric::Ndcg(10)));
    let run = |min: Option<usize>| {
        let mut kp = KFoldPass::new(d.queries.clone(), d.qrels.clone(), d.n_lab, 3, 1, cfg)
            .unwrap()
            .partitioned(d.query_part.clone())
            .unwrap();
        if let Some(m) = min {
            kp = kp.gamma_per_partition(m).unwrap();
        }
        kp.push_batch_in(&d.keys, d.corpus.view(), Some(&d.row_part), &mut Hooks::noop()).unwrap();
        kp.finish(&mut Hooks::noop()).unwrap()
    };
    let joint = run(None);
    let out = run(Some(1));
    assert_eq!(out.gamma, joint.gamma);
    for (a, b) in out.fold_curves.iter().zip(&joint.fold_curves) {
        assert!(a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12));
    }
    let all: Vec<usize> = (0..d.queries.nrows()).collect();
    // each partition's curve: its queries' out-of-fold metric, from separate passes per fold
    let mut total_after = 0.0;
    for pg in &out.fit.partition_gammas {
        let p = pg.partition;
        let (mut sum, mut n) = (Vec::<f64>::new(), 0usize);
        for fold in &out.folds {
            let only_p: Vec<usize> = fold.iter().copied().filter(|&r| d.query_part[r] == p).collect();
            if only_p.is_empty() {
                continue;
            }
            let evaluated = only_p.len();
            let c = separate_fold_curve(&d, &only_p, &all, cfg, 1);
            // (separate_fold_curve weights by the evaluated count of the partition's pass)
            sum.resize(c.len(), 0.0);
            sum.iter_mut().zip(&c).for_each(|(s, v)| *s += v);
            n += evaluated;
        }
        let curve: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let (a, b) = widest_best_run(&curve);
        assert!(pg.own);
        assert_eq!(pg.gamma, out.curve[a + (b - a) / 2].0, "partition {p}");
        assert!((pg.after - curve[a + (b - a) / 2]).abs() < 1e-12);
        total_after += pg.after * pg.queries as f64;
        // the final update of its records: all its labelled queries, at its gamma
        let rows: Vec<usize> = all.iter().copied().filter(|&r| d.query_part[r] == p).collect();
        let ms = gradients(d.queries.view(), &d.qrels, &rows, d.n_lab).unwrap();
        let (vectors, _) = crate::nudge::apply(
            Method::NudgeN,
            pg.gamma,
            {
                let idx: Vec<usize> = ms.keys.iter().map(|k| out.fit.keys.binary_search(k).unwrap()).collect();
                out.fit.original.select(Axis(0), &idx)
            }
            .view(),
            ms.g.view(),
            crate::nudge::NegativeRule::Skip,
        )
        .unwrap();
        for (i, key) in ms.keys.iter().enumerate() {
            assert_eq!(out.fit.vectors.row(out.fit.keys.binary_search(key).unwrap()), vectors.row(i));
        }
    }
    let n: usize = out.fit.partition_gammas.iter().map(|c| c.queries).sum();
    assert!((out.cv_metric_after - total_after / n as f64).abs() < 1e-12);
}
