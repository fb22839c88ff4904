"""nudge_fit(..., folds => K) on SciFact: gamma by k-fold cross-validation over the paper's
train + validation queries (80%), the update from all of them; scored on the test queries.
The core's k-fold is checked against a brute force in crates/nudge-core/src/kfold/tests.rs."""
from __future__ import annotations

import pytest

from pg_util import DIM


@pytest.fixture(scope="module")
def tv(scifact_db):
    conn = scifact_db.conn
    for kind, cols in (("queries", "*"), ("qrels", "*")):
        conn.execute(f"CREATE OR REPLACE VIEW scifact_tv_{kind} AS SELECT {cols} FROM scifact_train_{kind} "
                     f"UNION ALL SELECT {cols} FROM scifact_val_{kind}")
    conn.execute(f"ALTER TABLE scifact_docs ADD COLUMN IF NOT EXISTS kfold vector({DIM})")
    conn.execute(f"ALTER TABLE scifact_docs ADD COLUMN IF NOT EXISTS heldout vector({DIM})")
    return conn


def fit(conn, target, **kw):
    named = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(
        "SELECT fit_id, gamma, records_changed, validation_before, validation_after FROM nudge_fit("
        f"'scifact_docs', 'embedding', 'scifact_tv_queries', 'scifact_tv_qrels', target => %(target)s{named})",
        dict(target=target, **kw)).fetchone()


def ndcg_of(conn, column):
    return conn.execute("SELECT ndcg FROM nudge_evaluate('scifact_docs', %s, 'scifact_test_queries', "
                        "'scifact_test_qrels')", (column,)).fetchone()[0]


def test_kfold_uses_every_label_twice(tv):
    conn = tv
    fit_id, gamma, changed, before, after = fit(conn, "kfold", folds=5)
    held = fit(conn, "heldout")
    kfold_ndcg, held_ndcg = ndcg_of(conn, "kfold"), ndcg_of(conn, "heldout")
    # G from all 886 labelled queries moves more records than from the 90% a held-out split trains on
    assert changed > held[2]
    assert 0 < before < after
    assert kfold_ndcg >= 0.85 and kfold_ndcg > held_ndcg, (kfold_ndcg, held_ndcg)
    row = conn.execute("SELECT folds, validation_fraction, train_queries, validation_query_count "
                       "FROM nudge.fits WHERE fit_id = %s", (fit_id,)).fetchone()
    assert row == (5, None, 886, 886)


@pytest.mark.parametrize("kw,message", [
    (dict(folds=1), "folds must be at least 2"),
    (dict(folds=100000), "labelled queries"),
    (dict(folds=5, gamma=0.1), "folds needs gamma_search"),
    (dict(folds=5, gamma_search="reference"), "folds needs gamma_search"),
    (dict(folds=5, validation_queries="scifact_val_queries", validation_qrels="scifact_val_qrels"),
     "cannot be combined"),
])
def test_bad_folds(tv, kw, message):
    import psycopg
    conn = tv
    fits = conn.execute("SELECT count(*) FROM nudge.fits").fetchone()[0]
    with pytest.raises(psycopg.Error) as e:
        fit(conn, "kfold", **kw)
    assert e.value.sqlstate == "22023" and message in str(e.value), e.value
    assert conn.execute("SELECT count(*) FROM nudge.fits").fetchone()[0] == fits
