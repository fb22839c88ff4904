"""Exact score ties: nudge_evaluate ranks documents with the same score as trec_eval does (the
greater document id first, byte order), checked against pytrec_eval on SciFact with duplicated
documents (identical vectors under other ids)."""
from __future__ import annotations

import numpy as np
import pytest

K = 10


@pytest.fixture(scope="module")
def dups(scifact_db, ref):
    """scifact_dups: SciFact plus a copy of the top-3 documents of every test query (the
    relevant ones among them), each copy under an id that sorts above the original for half of
    them and below for the other half. Returns (doc ids, vectors) in table order."""
    import nudge_ref as R
    conn, ds = scifact_db.conn, ref.ds
    rows, _ = R.knn(ds.query_matrix(ref.test), ds.docs, 3, ds.doc_ids)
    picked = sorted({int(r) for r in rows.ravel()})
    extra_ids = [(ds.doc_ids[r] + "~" if i % 2 else "!" + ds.doc_ids[r]) for i, r in enumerate(picked)]
    conn.execute("DROP TABLE IF EXISTS scifact_dups")
    conn.execute("CREATE TABLE scifact_dups AS SELECT id, embedding FROM scifact_docs")
    conn.execute("INSERT INTO scifact_dups SELECT x.id, d.embedding FROM scifact_docs d "
                 "JOIN unnest(%s::text[], %s::text[]) AS x(id, of) ON d.id = x.of",
                 (extra_ids, [ds.doc_ids[r] for r in picked]))
    ids = list(ds.doc_ids) + extra_ids
    vectors = np.vstack([ds.docs, ds.docs[picked]])
    return ids, vectors, picked


def numpy_metrics(ref, ids, vectors, picked, copies_ahead=0.0):
    """pytrec_eval on the numpy run (float64 scores; every copy gets exactly its original's
    score, plus `copies_ahead`). pytrec_eval orders ties by document id itself."""
    import nudge_ref as R
    ds, n = ref.ds, len(ref.ds.doc_ids)
    rank = R.tie_rank(ids)
    S = R.scores(ds.query_matrix(ref.test), vectors, "cosine")
    S[:, n:] = S[:, picked] + copies_ahead
    run = {}
    for qi, q in enumerate(ref.test):
        s = S[qi]
        kth = np.partition(s, s.size - K)[s.size - K]
        cand = np.nonzero(s >= kth)[0]
        order = cand[np.lexsort((-rank[cand], -s[cand]))][:K]
        run[q] = {ids[r]: float(s[r]) for r in order}
    return R.evaluate(run, ref.ds.qrels, K)


def test_evaluate_breaks_ties_as_trec_eval(scifact_db, ref, dups):
    ids, vectors, picked = dups
    got = scifact_db.conn.execute(
        "SELECT queries, ndcg, recall, capped_recall, mrr FROM nudge_evaluate("
        "'scifact_dups', 'embedding', 'scifact_test_queries', 'scifact_test_qrels')").fetchone()
    trec = numpy_metrics(ref, ids, vectors, picked)
    # the rule matters here: every copy ahead of its original (another tie rule) scores otherwise
    copies_first = numpy_metrics(ref, ids, vectors, picked, copies_ahead=1e-6)
    assert abs(copies_first["ndcg"] - trec["ndcg"]) > 1e-3, (copies_first, trec)
    assert got[0] == trec["queries"]
    for name, value in zip(("ndcg", "recall", "capped_recall", "mrr"), got[1:]):
        assert value == pytest.approx(trec[name], abs=1e-9), name
