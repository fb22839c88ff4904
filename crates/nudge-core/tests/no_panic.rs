//! No public function of the core panics, whatever it is given: random shapes (including
//! empty and mismatched ones), ids (repeated, out of range, huge), NaN / infinities / huge
//! values, zero vectors, k from 0 to usize::MAX, any gamma and fraction, and interrupt hooks
//! that cancel at a random point. Errors are fine; a panic inside a PostgreSQL backend is not
//! (it would abort the statement with an internal error, and an allocation failure would
//! take the server down, as a huge k once did).
//!
//! Bounded: small shapes and 300 cases per property, so the whole file runs in well under a
//! second in release mode (`cargo test -p nudge-core --release --test no_panic`; set
//! PROPTEST_CASES=20000 for a longer hunt). Every run draws fresh cases; nothing is written
//! to the tree (failure persistence is off); a failure prints the minimal input.

use std::str::FromStr;

use ndarray::{s, Array2, Axis};
use nudge_core::gamma::{FitConfig, FitPass, Selection};
use nudge_core::gradient::{gradients, MovingSet, Qrel};
use nudge_core::kfold::KFoldPass;
use nudge_core::knn::{dot_rows, Distance, TopK};
use nudge_core::metrics::{evaluate, Metric};
use nudge_core::nudge::{apply, check_gamma, Method, NegativeRule};
use nudge_core::split::{folds, permutation, split};
use nudge_core::{Hooks, NudgeError, Progress};
use proptest::prelude::*;

const CASES: u32 = 300;

/// Floats as they come out of tables: mostly ordinary, sometimes hostile.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        12 => -2.0f32..2.0,
        1 => Just(0.0f32),
        1 => Just(-0.0f32),
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(f32::MIN_POSITIVE / 4.0),
        1 => Just(1e30f32),
    ]
}

fn float64() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => -1.0f64..5.0,
        1 => Just(0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-f64::INFINITY),
        1 => Just(f64::MAX),
        1 => Just(1e300),
        1 => Just(-1e-300),
    ]
}

/// k: mostly small, sometimes 0 or astronomically large.
fn k_value() -> impl Strategy<Value = usize> {
    prop_oneof![6 => 0usize..12, 1 => Just(usize::MAX), 1 => Just(u32::MAX as usize + 1), 1 => Just(1 << 40)]
}

fn key() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0u64..24, 1 => Just(u64::MAX), 1 => Just(u64::MAX - 1)]
}

fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = Array2<f32>> {
    (0..=max_rows, 0..=max_cols).prop_flat_map(|(r, c)| {
        proptest::collection::vec(value(), r * c)
            .prop_map(move |v| Array2::from_shape_vec((r, c), v).expect("r x c values"))
    })
}

fn qrels(max: usize) -> impl Strategy<Value = Vec<Qrel>> {
    proptest::collection::vec(
        (
            prop_oneof![8 => 0u32..8, 1 => Just(u32::MAX)],
            key(),
            float64(),
        ),
        0..max,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(query, record, grade)| Qrel {
                query,
                record,
                grade,
            })
            .collect()
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![Just(Method::NudgeN), Just(Method::NudgeM)]
}

fn rule() -> impl Strategy<Value = NegativeRule> {
    prop_oneof![Just(NegativeRule::Skip), Just(NegativeRule::Move)]
}

fn metric() -> impl Strategy<Value = Metric> {
    k_value().prop_flat_map(|k| {
        prop_oneof![
            Just(Metric::Ndcg(k)),
            Just(Metric::Recall(k)),
            Just(Metric::CappedRecall(k)),
            Just(Metric::Mrr(k)),
            Just(Metric::Top1),
        ]
    })
}

fn selection() -> impl Strategy<Value = Selection> {
    prop_oneof![
        float64().prop_map(Selection::Fixed),
        Just(Selection::Parity),
        metric().prop_map(Selection::Best),
    ]
}

/// Hooks whose interrupt check cancels on its `cancel_at`-th call (never when None).
fn with_hooks<R>(cancel_at: Option<usize>, f: impl FnOnce(&mut Hooks) -> R) -> R {
    let mut calls = 0usize;
    let mut check = || {
        calls += 1;
        if Some(calls) == cancel_at {
            Err(NudgeError::Cancelled)
        } else {
            Ok(())
        }
    };
    let mut progress = |p: Progress<'_>| {
        let _ = (p.phase.len(), p.done, p.total);
    };
    let mut hooks = Hooks::new(None, &mut check, &mut progress);
    f(&mut hooks)
}

fn cancel_at() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![3 => Just(None), 1 => (1usize..6).prop_map(Some)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn parsers_never_panic(text in "\\PC{0,24}", k in any::<u64>(), name in "(ndcg|recall|capped_recall|mrr|top1|TOP-1|NUDGE_N|nudge_m|cosine|l2|ip)?[@ ]?-?[0-9]{0,22}") {
        for t in [text.as_str(), name.as_str(), &format!("ndcg@{k}"), &format!("mrr@{text}")] {
            if let Ok(m) = Metric::from_str(t) {
                let _ = (m.validate(), m.k(), m.to_string());
            }
            let _ = Distance::from_str(t).map(|d| d.to_string());
            let _ = Method::from_str(t).map(|m| m.to_string());
        }
    }

    #[test]
    fn split_never_panics(n in prop_oneof![0usize..300, Just(usize::MAX / 2)], fraction in float64(), seed in any::<u32>()) {
        if n < 1000 {
            let p = permutation(n, seed);
            prop_assert_eq!(p.len(), n);
        }
        if let Ok((train, val)) = split(n.min(100_000), fraction, seed) {
            prop_assert_eq!(train.len() + val.len(), n.min(100_000));
            prop_assert!(!train.is_empty() && !val.is_empty());
        }
        let k = (fraction.abs().min(1e6) * 10.0) as usize;
        if let Ok(f) = folds(n.min(100_000), k, seed) {
            prop_assert_eq!(f.len(), k);
            prop_assert_eq!(f.iter().map(|x| x.len()).sum::<usize>(), n.min(100_000));
        }
    }

    #[test]
    fn metrics_never_panic(
        ranked in proptest::collection::vec((key(), value()), 0..20),
        relevant in proptest::collection::vec((key(), float64()), 0..10),
        k in k_value(), m in metric(),
    ) {
        let q = evaluate(&ranked, &relevant, k);
        for v in [q.ndcg, q.recall, q.capped_recall, q.mrr] {
            prop_assert!(v.is_finite() && (0.0..=1.0 + 1e-9).contains(&v), "metric {} out of [0, 1]", v);
        }
        let _ = m.value(&ranked, &relevant);
    }

    #[test]
    fn topk_never_panics(
        queries in matrix(5, 4), batches in proptest::collection::vec((matrix(7, 4), proptest::collection::vec(key(), 0..8)), 0..4),
        k in k_value(), cancel in cancel_at(),
    ) {
        let _ = dot_rows(queries.view(), queries.view());
        for dist in [Distance::InnerProduct, Distance::Cosine, Distance::L2] {
            if let Ok(mut tk) = TopK::new(queries.clone(), k, dist) {
                let _ = (tk.k(), tk.dim(), tk.n_queries(), tk.distance(), tk.rows_seen());
                with_hooks(cancel, |hooks| {
                    for (b, keys) in &batches {
                        let _ = dot_rows(queries.view(), b.view());
                        let _ = tk.push_batch(keys, b.view(), hooks);
                    }
                });
                let runs = tk.finish();
                prop_assert_eq!(runs.len(), queries.nrows());
            }
        }
    }

    #[test]
    fn gradients_and_apply_never_panic(
        queries in matrix(8, 4), q in qrels(12),
        train in proptest::collection::vec(prop_oneof![8 => 0usize..10, 1 => Just(usize::MAX)], 0..10),
        n_labelled in prop_oneof![0u64..30, Just(u64::MAX)],
        d in matrix(6, 4), g in matrix(6, 4), gamma in float64(), m in method(), r in rule(),
    ) {
        if let Ok(ms) = gradients(queries.view(), &q, &train, n_labelled) {
            let _ = (ms.len(), ms.is_empty(), ms.position(3));
            prop_assert_eq!(ms.g.nrows(), ms.keys.len());
            prop_assert!(ms.keys.windows(2).all(|w| w[0] < w[1]));
        }
        let _ = check_gamma(m, gamma);
        if let Ok((out, changed)) = apply(m, gamma, d.view(), g.view(), r) {
            prop_assert_eq!(out.dim(), d.dim());
            prop_assert_eq!(changed.len(), d.nrows());
            prop_assert!(out.iter().all(|x| x.is_finite()), "apply returned a non-finite value");
        }
    }

    #[test]
    fn fit_pass_never_panics(
        dim in 1usize..4, nkeys in 0usize..5, corrupt in 0u8..16,
        gvals in proptest::collection::vec(-2.0f32..2.0, 16), vvals in proptest::collection::vec(-2.0f32..2.0, 16),
        cvals in proptest::collection::vec(prop_oneof![20 => -2.0f32..2.0, 1 => Just(0.0f32)], 64),
        hostile in value(), nv in 1usize..5,
        labels in proptest::collection::vec((0u32..5, 0u64..12, prop_oneof![4 => 0.0f64..3.0, 1 => Just(-1.0)]), 0..10),
        ncorpus in 0usize..14, split_at in 0usize..16,
        extra_keys in proptest::collection::vec(key(), 0..3),
        sel in selection(), m in method(), r in rule(), gamma in float64(), cancel in cancel_at(),
    ) {
        // mostly well-formed inputs, each broken in one way now and then (`corrupt`)
        let mut keys: Vec<u64> = (0..nkeys as u64).map(|i| i * 2 + 1).collect();
        match corrupt {
            0 => keys.reverse(),
            1 => keys.push(keys.last().copied().unwrap_or(0)),
            2 => keys.push(u64::MAX),
            _ => {}
        }
        let mut val_qrels: Vec<Qrel> = labels.iter()
            .map(|&(query, record, grade)| Qrel { query: query % nv as u32, record, grade }).collect();
        if corrupt == 8 {
            val_qrels.push(Qrel { query: nv as u32, record: 1, grade: 1.0 }); // a query out of range
        }
        if corrupt == 9 {
            val_qrels.push(Qrel { query: 0, record: 1, grade: hostile as f64 });
        }
        let grows = if corrupt == 3 { keys.len() + 1 } else { keys.len() };
        let gdim = if corrupt == 4 { dim + 1 } else { dim };
        let mut mg = Array2::from_shape_fn((grows, gdim), |(i, j)| gvals[(i * gdim + j) % gvals.len()]);
        if corrupt == 10 && grows > 0 {
            mg[[0, 0]] = hostile;
        }
        let vdim = if corrupt == 5 { dim + 1 } else { dim };
        let mut vq = Array2::from_shape_fn((nv, vdim), |(i, j)| vvals[(i * vdim + j) % vvals.len()]);
        if corrupt == 11 {
            vq[[0, 0]] = hostile;
        }
        let config = FitConfig { method: m, selection: sel, negative_rule: r };
        let mut corpus = Array2::from_shape_fn((ncorpus, dim), |(i, j)| cvals[(i * dim + j) % cvals.len()]);
        if corrupt == 2 && ncorpus > 1 {
            corpus[[1, 0]] = hostile;
        }
        let mut corpus_keys: Vec<u64> = (0..ncorpus as u64).collect();
        corpus_keys.extend(extra_keys);
        if corrupt == 6 {
            corpus_keys.insert(0, 1); // a moving key twice
        }
        if let Ok(mut pass) = FitPass::new(MovingSet { keys, g: mg }, vq, val_qrels, config) {
            let _ = (pass.metric(), pass.n_validation_queries(), pass.moving_keys().len(), pass.all_moving_seen(), pass.rows_seen());
            let rows = corpus.nrows().min(corpus_keys.len());
            let (ck, vecs) = (&corpus_keys[..rows], corpus.slice(s![..rows, ..]));
            let at = split_at.min(rows);
            let outcome = with_hooks(cancel, |hooks| {
                let _ = pass.push_batch(&ck[..at], vecs.slice(s![..at, ..]), hooks);
                let _ = pass.push_batch(&ck[at..], vecs.slice(s![at.., ..]), hooks);
                if corrupt == 7 {
                    // keys and rows disagree; a repeated batch
                    let _ = pass.push_batch(&corpus_keys, corpus.view(), hooks);
                    let _ = pass.push_batch(ck, vecs, hooks);
                }
                let _ = pass.validation_metric_at(gamma);
                pass.finish(hooks)
            });
            if let Ok(o) = outcome {
                prop_assert_eq!(o.vectors.nrows(), o.keys.len());
                prop_assert_eq!(o.changed.len(), o.keys.len());
                prop_assert!(o.gamma.is_finite() && o.gamma >= 0.0);
                prop_assert!(o.vectors.iter().all(|x| x.is_finite()));
                for v in [o.validation_before, o.validation_after].into_iter().flatten() {
                    prop_assert!(v.is_finite(), "validation metric {}", v);
                }
            }
        }
    }

    /// A fit that goes the whole way (valid inputs built from the random ones) under random
    /// cancellation: either an outcome or `Cancelled`, never a panic.
    #[test]
    fn valid_fits_finish_or_cancel(
        corpus in proptest::collection::vec(proptest::collection::vec(-1.0f32..1.0, 3), 4..30),
        labels in proptest::collection::vec((0u32..6, 0u64..4, 0.0f64..3.0), 1..16),
        sel in selection(), m in method(), r in rule(), cancel in cancel_at(),
    ) {
        let n = corpus.len();
        let dim = 3;
        let mut flat: Vec<f32> = corpus.into_iter().flatten().collect();
        for row in flat.chunks_mut(dim) {
            if row.iter().all(|x| *x == 0.0) {
                row[0] = 1.0;
            }
        }
        let docs = Array2::from_shape_vec((n, dim), flat).expect("n x dim");
        let queries = docs.select(Axis(0), &(0..6).map(|i| i % n).collect::<Vec<_>>());
        let q: Vec<Qrel> = labels.iter().map(|&(query, record, grade)| Qrel { query, record, grade }).collect();
        let train: Vec<usize> = (0..3).collect();
        let Ok(moving) = gradients(queries.view(), &q, &train, 4) else { return Ok(()); };
        let vq = queries.slice(s![3.., ..]).to_owned();
        let vqrels: Vec<Qrel> = q.iter().filter(|x| x.query >= 3).map(|x| Qrel { query: x.query - 3, ..*x }).collect();
        let config = FitConfig { method: m, selection: sel, negative_rule: r };
        let Ok(mut pass) = FitPass::new(moving, vq, vqrels, config) else { return Ok(()); };
        let keys: Vec<u64> = (0..n as u64).collect();
        let res = with_hooks(cancel, |hooks| {
            pass.push_batch(&keys, docs.view(), hooks)?;
            pass.finish(hooks)
        });
        match res {
            Ok(o) => prop_assert!(o.vectors.iter().all(|x| x.is_finite())),
            Err(e) => { let _ = e.to_string(); }
        }
    }

    #[test]
    fn kfold_never_panics(
        queries in matrix(8, 3), q in qrels(14), n_labelled in prop_oneof![0u64..24, Just(u64::MAX)],
        k in prop_oneof![6 => 0usize..6, 1 => Just(usize::MAX)], seed in any::<u32>(),
        corpus in matrix(24, 3), sel in selection(), m in method(), r in rule(),
        cancel in cancel_at(), split_at in 0usize..30,
    ) {
        let config = FitConfig { method: m, selection: sel, negative_rule: r };
        let Ok(mut kp) = KFoldPass::new(queries, q, n_labelled, k, seed, config) else { return Ok(()); };
        let _ = (kp.folds().len(), kp.labelled_keys().len(), kp.rows_seen(), kp.all_labelled_seen(), kp.shard_spec());
        let keys: Vec<u64> = (0..corpus.nrows() as u64).collect();
        let at = split_at.min(corpus.nrows());
        let res = with_hooks(cancel, |hooks| {
            let _ = kp.push_batch(&keys[..at], corpus.slice(s![..at, ..]), hooks);
            let _ = kp.push_batch(&keys[at..], corpus.slice(s![at.., ..]), hooks);
            kp.finish(hooks)
        });
        match res {
            Ok(o) => {
                prop_assert!(o.fit.vectors.iter().all(|x| x.is_finite()));
                prop_assert!(o.gamma.is_finite() && o.gamma >= 0.0);
                prop_assert!(o.cv_metric_after >= o.cv_metric_before - 1e-12);
                prop_assert_eq!(o.fold_curves.len(), o.folds.len());
            }
            Err(e) => { let _ = e.to_string(); }
        }
    }
}
