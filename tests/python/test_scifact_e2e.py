"""End-to-end checks of the extension against the numpy reference on SciFact.

Every fit writes into a target column of its own (vector(384), added here), so the source
column `embedding` is never touched and the tests do not depend on each other's order.
The numpy side is tests/reference/nudge_ref.py (float64 throughout, pytrec_eval metrics,
ties broken by record id descending in byte order).

Tolerances are the contract; do not loosen them to make a run pass.
"""
from __future__ import annotations

import numpy as np
import pytest

import nudge_ref as R
from pg_util import DIM, column_md5, read_vectors

K = 10
BASELINE_NDCG = 0.6576           # NUDGE.md, "Measured here": no fine-tuning, test NDCG@10
IP = "inner_product"             # nudge_evaluate's name for inner-product retrieval
METRICS = ("ndcg", "recall", "capped_recall", "mrr")

EVAL_TOL = 1e-6                  # metrics vs pytrec_eval / by-hand numpy
VECTOR_TOL = 1e-5                # max abs difference of any nudged coordinate
NDCG_AFTER_FIT_TOL = 1e-5        # test NDCG@10 after a reference-mode fit
CURVE_TOL = 1e-6                 # nudge.fits.curve values vs a full numpy recomputation

FITS = {
    "fixed_n": dict(method="nudge_n", gamma=0.14),
    "fixed_m": dict(method="nudge_m", gamma=0.1),
    "ref_n": dict(method="nudge_n", gamma_search="reference"),
    "ref_m": dict(method="nudge_m", gamma_search="reference"),
    "default": dict(),           # nudge_n, metric ndcg@10, gamma_search 'best'
}

FIT_ARG_TYPES = {
    "corpus": "regclass", "embedding": "text", "queries": "regclass", "qrels": "regclass",
    "id_column": "text", "method": "text", "validation_queries": "regclass",
    "validation_qrels": "regclass", "validation_fraction": "float8", "seed": "int",
    "metric": "text", "gamma": "float8", "target": "text", "dry_run": "boolean",
    "gamma_search": "text", "negative_rule": "text",
}
FIT_COLUMNS = ("fit_id", "method", "gamma", "records_changed", "validation_before",
               "validation_after", "seconds")


# --------------------------------------------------------------------------- SQL helpers

def evaluate_sql(conn, column, split, k=K, distance="cosine"):
    row = conn.execute(
        "SELECT queries, ndcg, recall, capped_recall, mrr FROM nudge_evaluate("
        "%s::regclass, %s::text, %s::regclass, %s::regclass, "
        "k => %s::int, distance => %s::text)",
        ("scifact_docs", column, f"scifact_{split}_queries", f"scifact_{split}_qrels",
         k, distance)).fetchone()
    return dict(zip(("queries",) + METRICS, row))


def fit_sql(conn, target, **kw):
    """nudge_fit on scifact_docs with the paper split's validation tables, into `target`."""
    from psycopg import sql

    conn.execute(sql.SQL("ALTER TABLE scifact_docs ADD COLUMN IF NOT EXISTS {} vector({})")
                 .format(sql.Identifier(target), sql.Literal(DIM)))
    args = {
        "corpus": "scifact_docs", "embedding": "embedding",
        "queries": "scifact_train_queries", "qrels": "scifact_train_qrels",
        "validation_queries": "scifact_val_queries", "validation_qrels": "scifact_val_qrels",
        "target": target, **kw,
    }
    named = ", ".join(f"{name} => %({name})s::{FIT_ARG_TYPES[name]}" for name in args)
    rows = conn.execute(f"SELECT {', '.join(FIT_COLUMNS)} FROM nudge_fit({named})",
                        args).fetchall()
    assert len(rows) == 1, rows
    return dict(zip(FIT_COLUMNS, rows[0]))


@pytest.fixture(scope="module")
def fit(scifact_db):
    """fit(name) runs FITS[name] once (into column nudged_<name>) and returns its row."""
    done = {}

    def get(name):
        if name not in done:
            try:
                done[name] = fit_sql(scifact_db.conn, f"nudged_{name}", **FITS[name])
            except Exception as e:  # remember the failure, do not re-run it per test
                done[name] = e
        if isinstance(done[name], Exception):
            raise done[name]
        return done[name]

    return get


# --------------------------------------------------------------------------- numpy helpers

def np_nudge(ref, method, gamma):
    if method == "nudge_n":
        return R.nudge_n(ref.ds.docs, ref.G, gamma, negative_rule="skip")
    # On SciFact no moving record has d^.G < 0, so "skip" and "move" agree for NUDGE-M
    # (test_reference checks it); "skip" is the extension's default negative_rule.
    return R.nudge_m(ref.ds.docs, ref.G, gamma, negative_rule="skip")


def np_metrics(ref, D, split, distance="cosine", k=K):
    ids = {"train": ref.train, "val": ref.val, "test": ref.test}[split]
    ds = ref.ds
    return R.evaluate_embeddings(D, ds.doc_ids, ds.query_matrix(ids), ids,
                                 ds.qrels_for(ids), k, distance)


def assert_metrics_close(got, exp, tol=EVAL_TOL):
    assert got["queries"] == exp["queries"], (got, exp)
    bad = {m: (got[m], exp[m]) for m in METRICS
           if got[m] is None or not abs(got[m] - exp[m]) <= tol}
    assert not bad, f"nudge_evaluate vs numpy (tol {tol}): {bad}"


def assert_source_untouched(scifact_db, ref):
    assert column_md5(scifact_db.conn, "embedding") == scifact_db.source_md5
    assert np.array_equal(read_vectors(scifact_db.conn, "embedding", ref.ds.doc_ids),
                          ref.ds.docs)


# --------------------------------------------------------------------------- nudge_evaluate

@pytest.mark.parametrize("split", ["test", "train"])
def test_evaluate_matches_pytrec_eval(scifact_db, ref, split):
    conn = scifact_db.conn
    got = evaluate_sql(conn, "embedding", split, K, "cosine")
    D = read_vectors(conn, "embedding", ref.ds.doc_ids)
    exp = np_metrics(ref, D, split, "cosine")
    assert exp["queries"] == {"test": 223, "train": 776}[split]
    if split == "test":
        assert round(exp["ndcg"], 4) == BASELINE_NDCG
    assert_metrics_close(got, exp)


@pytest.mark.parametrize("name,distance", [
    ("fixed_n", "cosine"),
    ("fixed_m", "cosine"),
    ("fixed_m", IP),     # NUDGE-M output is not unit-norm: inner product ranks differently
])
def test_evaluate_after_fit(scifact_db, ref, fit, name, distance):
    fit(name)
    conn = scifact_db.conn
    column = f"nudged_{name}"
    got = evaluate_sql(conn, column, "test", K, distance)
    D = read_vectors(conn, column, ref.ds.doc_ids)
    assert_metrics_close(got, np_metrics(ref, D, "test", distance))


# --------------------------------------------------------------------------- fixed gamma

@pytest.mark.parametrize("name", ["fixed_n", "fixed_m"])
def test_fit_fixed_gamma(scifact_db, ref, fit, name):
    res = fit(name)
    method, gamma = FITS[name]["method"], FITS[name]["gamma"]
    assert res["method"] == method
    assert abs(res["gamma"] - gamma) <= 1e-12

    expected, changed = np_nudge(ref, method, gamma)
    got = read_vectors(scifact_db.conn, f"nudged_{name}", ref.ds.doc_ids)
    err = np.abs(got.astype(np.float64) - expected)
    worst = int(np.argmax(err.max(axis=1)))
    assert err.max() <= VECTOR_TOL, (
        f"max |db - numpy| = {err.max():.3g} at id {ref.ds.doc_ids[worst]} "
        f"(moving: {bool(changed[worst])}); rows over tol: {int((err.max(1) > VECTOR_TOL).sum())}")
    assert res["records_changed"] == int(changed.sum())
    assert_source_untouched(scifact_db, ref)

    if method == "nudge_n":
        # validation metric (default ndcg@10) before/after, on the validation tables
        before = np_metrics(ref, ref.ds.docs, "val")["ndcg"]
        after = np_metrics(ref, expected, "val")["ndcg"]
        assert abs(res["validation_before"] - before) <= EVAL_TOL
        assert abs(res["validation_after"] - after) <= EVAL_TOL


# --------------------------------------------------------------------------- reference gamma

def test_fit_reference_gamma_nudge_n(scifact_db, ref, fit):
    ds = ref.ds
    np_gamma, _ = R.select_gamma_nudge_n_reference(
        ds.docs, ref.G, ds.query_matrix(ref.val), ref.val, ds.qrels_for(ref.val), ds.doc_ids)
    assert abs(np_gamma - 0.14) <= 1e-12          # the numpy reference itself (NUDGE.md)

    res = fit("ref_n")
    assert res["method"] == "nudge_n"
    assert abs(res["gamma"] - np_gamma) <= 1e-12

    expected, changed = np_nudge(ref, "nudge_n", res["gamma"])
    assert res["records_changed"] == int(changed.sum())
    exp = np_metrics(ref, expected.astype(np.float32), "test", "cosine")
    assert round(exp["ndcg"], 4) == 0.8344
    got = evaluate_sql(scifact_db.conn, "nudged_ref_n", "test", K, "cosine")
    assert got["queries"] == exp["queries"]
    assert abs(got["ndcg"] - exp["ndcg"]) <= NDCG_AFTER_FIT_TOL, (got, exp)
    assert_source_untouched(scifact_db, ref)


def test_fit_reference_gamma_nudge_m(scifact_db, ref, fit):
    ds = ref.ds
    np_gamma, _ = R.select_gamma_nudge_m_reference(
        ds.docs, ref.G, ds.query_matrix(ref.val), ref.val, ds.qrels_for(ref.val), ds.doc_ids)

    res = fit("ref_m")
    assert res["method"] == "nudge_m"
    assert abs(res["gamma"] - np_gamma) <= 1e-6, (res["gamma"], np_gamma)

    expected, changed = np_nudge(ref, "nudge_m", res["gamma"])
    assert res["records_changed"] == int(changed.sum())
    # NUDGE.md's 0.7699 is measured with cosine k-NN over the NUDGE-M output.
    for distance in ("cosine", IP):
        exp = np_metrics(ref, expected.astype(np.float32), "test", distance)
        if distance == "cosine":
            assert round(exp["ndcg"], 4) == 0.7699
        got = evaluate_sql(scifact_db.conn, "nudged_ref_m", "test", K, distance)
        assert got["queries"] == exp["queries"]
        assert abs(got["ndcg"] - exp["ndcg"]) <= NDCG_AFTER_FIT_TOL, (distance, got, exp)
    assert_source_untouched(scifact_db, ref)


# --------------------------------------------------------------------------- default search

def _curve(conn, fit_id):
    row = conn.execute("SELECT curve FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone()
    assert row is not None, f"no nudge.fits row for fit_id {fit_id}"
    curve = row[0]
    assert isinstance(curve, list) and all(len(p) == 2 for p in curve), curve
    return sorted((float(g), float(v)) for g, v in curve)


def test_default_fit_curve_matches_numpy(scifact_db, ref, fit):
    res = fit("default")
    assert res["method"] == "nudge_n"
    pts = _curve(scifact_db.conn, res["fit_id"])
    assert len(pts) >= 50, f"curve has only {len(pts)} points"
    # 50 points spread over the whole search plus every point around the chosen gamma
    chosen = min(range(len(pts)), key=lambda i: abs(pts[i][0] - res["gamma"]))
    picks = np.unique(np.concatenate([np.round(np.linspace(0, len(pts) - 1, 50)).astype(int),
                                      np.arange(max(chosen - 5, 0), min(chosen + 6, len(pts)))]))
    assert len(picks) >= 50

    parts = R.nudge_n_parts(ref.ds.docs, ref.G, "skip")
    mismatches = []
    for i in picks:
        gamma, value = pts[i]
        new, _ = R.nudge_n(ref.ds.docs, ref.G, gamma, parts=parts)
        exp = np_metrics(ref, new, "val")["ndcg"]
        if not abs(value - exp) <= CURVE_TOL:
            mismatches.append((gamma, value, exp))
    assert not mismatches, f"curve points off by > {CURVE_TOL} (gamma, db, numpy): {mismatches}"


def test_default_fit_improves_test_ndcg(scifact_db, ref, fit):
    res = fit("default")
    conn = scifact_db.conn
    got = evaluate_sql(conn, "nudged_default", "test", K, "cosine")
    assert got["queries"] == 223
    assert got["ndcg"] >= BASELINE_NDCG + 0.1, got

    # validation metric before/after agree with numpy at the chosen gamma,
    # and 'best' really is the best point of its own curve
    expected, changed = np_nudge(ref, "nudge_n", res["gamma"])
    assert res["records_changed"] == int(changed.sum())
    assert abs(res["validation_before"] - np_metrics(ref, ref.ds.docs, "val")["ndcg"]) <= EVAL_TOL
    assert abs(res["validation_after"] - np_metrics(ref, expected, "val")["ndcg"]) <= EVAL_TOL
    best_on_curve = max(v for _, v in _curve(conn, res["fit_id"]))
    assert res["validation_after"] >= best_on_curve - EVAL_TOL
    assert_source_untouched(scifact_db, ref)
