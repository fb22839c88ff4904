"""nudge_fit(..., partition => 'tenant') and nudge_evaluate(..., partition => 'tenant') on
SciFact split into three tenants, checked against numpy: every query ranks only its tenant's
documents. At a fixed gamma the partitioned fit gives every tenant the vectors of a fit of
that tenant alone; the validation it reports is the mean over all labelled validation queries
of their tenant-filtered NDCG@10, computed here with numpy and pytrec_eval."""
from __future__ import annotations

import numpy as np
import pytest

import nudge_ref as R
from pg_util import DIM, read_vectors

TENANTS = 3


def _tenants(ds):
    """Tenant of every document and query: the connected components of the labels (so that no
    label crosses tenants), dealt round-robin; unlabelled documents by position."""
    parent = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for q, rel in ds.qrels.items():
        for d in rel:
            parent[find(("q", q))] = find(("d", d))
    roots = sorted({find(n) for n in list(parent)}, key=lambda n: (n[0], n[1]))
    comp = {r: i % TENANTS for i, r in enumerate(roots)}
    doc_t = {d: comp[find(("d", d))] if ("d", d) in parent else i % TENANTS for i, d in enumerate(ds.doc_ids)}
    query_t = {q: comp[find(("q", q))] if ("q", q) in parent else 0 for q in ds.query_ids}
    return doc_t, query_t


@pytest.fixture(scope="module")
def tenants(scifact_db, ref):
    conn = scifact_db.conn
    doc_t, query_t = _tenants(ref.ds)
    conn.execute("CREATE TABLE part_docs AS SELECT id, embedding FROM scifact_docs")
    conn.execute("ALTER TABLE part_docs ADD PRIMARY KEY (id)")
    conn.execute("ALTER TABLE part_docs ADD COLUMN tenant text")
    for col in ("p_fixed", "s_fixed", "p_best", "p_own", "s_own"):
        conn.execute(f"ALTER TABLE part_docs ADD COLUMN {col} vector({DIM})")
    with conn.cursor() as cur:
        cur.executemany("UPDATE part_docs SET tenant = %s WHERE id = %s",
                        [(f"t{t}", d) for d, t in doc_t.items()])
    for name in ("train", "val"):
        conn.execute(f"CREATE TABLE part_{name}_queries AS SELECT id, embedding, NULL::text AS tenant "
                     f"FROM scifact_{name}_queries")
        with conn.cursor() as cur:
            cur.executemany(f"UPDATE part_{name}_queries SET tenant = %s WHERE id = %s",
                            [(f"t{query_t[q]}", q) for q in (ref.train if name == "train" else ref.val)])
    for t in range(TENANTS):
        conn.execute(f"CREATE VIEW part_docs_t{t} AS SELECT id, embedding, s_fixed, s_own FROM part_docs "
                     f"WHERE tenant = 't{t}'")
        for name in ("train", "val"):
            conn.execute(f"CREATE VIEW part_{name}_queries_t{t} AS SELECT id, embedding FROM part_{name}_queries "
                         f"WHERE tenant = 't{t}'")
            conn.execute(f"CREATE VIEW part_{name}_qrels_t{t} AS SELECT r.* FROM scifact_{name}_qrels r "
                         f"JOIN part_{name}_queries q ON q.id = r.query_id WHERE q.tenant = 't{t}'")
    conn.execute("ANALYZE")
    return conn, doc_t, query_t


def _fit(conn, corpus, queries, qrels, vqueries, vqrels, **kw):
    named = "".join(f", {k} => %({k})s" for k in kw)
    return conn.execute(
        "SELECT gamma, records_changed, validation_before, validation_after FROM nudge_fit("
        f"%(c)s, 'embedding', %(q)s, %(r)s, validation_queries => %(vq)s, validation_qrels => %(vr)s{named})",
        dict(c=corpus, q=queries, r=qrels, vq=vqueries, vr=vqrels, **kw)).fetchone()


def _partitioned_ndcg(ds, D, doc_t, query_t, query_ids):
    """Mean NDCG@10 over `query_ids` (those with a relevant label), each ranking only its
    tenant's documents (numpy k-NN, pytrec_eval)."""
    doc_ids = np.array(ds.doc_ids, dtype=object)
    dt = np.array([doc_t[d] for d in ds.doc_ids])
    rank = R.tie_rank(ds.doc_ids)
    run = {}
    for t in range(TENANTS):
        qs = [q for q in query_ids if query_t[q] == t]
        if not qs:
            continue
        cols = np.nonzero(dt == t)[0]
        rows, sc = R.knn(ds.query_matrix(qs), D[cols], 10, list(doc_ids[cols]), rank=rank[cols])
        run.update(R.run_dict(qs, rows, sc, list(doc_ids[cols])))
    return R.evaluate(run, ds.qrels, 10)


def test_fixed_gamma_equals_fits_of_each_tenant_alone(tenants, ref):
    conn, _, _ = tenants
    part = _fit(conn, "part_docs", "part_train_queries", "scifact_train_qrels", "part_val_queries",
                "scifact_val_qrels", gamma=0.25, target="p_fixed", partition="tenant")
    changed = 0
    for t in range(TENANTS):
        one = _fit(conn, f"part_docs_t{t}", f"part_train_queries_t{t}", f"part_train_qrels_t{t}",
                   f"part_val_queries_t{t}", f"part_val_qrels_t{t}", gamma=0.25, target="s_fixed")
        changed += one[1]
    assert part[1] == changed > 0
    ids = ref.ds.doc_ids
    p = read_vectors(conn, "p_fixed", ids, "part_docs").astype(np.float64)
    s = read_vectors(conn, "s_fixed", ids, "part_docs").astype(np.float64)
    assert np.abs(p - s).max() <= 1e-6
    assert np.abs(p - ref.ds.docs).max() > 1e-3   # the fit did move records


def test_reported_validation_is_the_partition_filtered_mean(tenants, ref):
    """The default gamma search (NDCG@10 on the validation tables): validation_before and
    validation_after are numpy's tenant-filtered NDCG@10 of the validation queries on the
    stored vectors before and after (1e-9); nudge_evaluate(partition =>) says the same."""
    conn, doc_t, query_t = tenants
    ds = ref.ds
    gamma, changed, before, after = _fit(conn, "part_docs", "part_train_queries", "scifact_train_qrels",
                                         "part_val_queries", "scifact_val_qrels", target="p_best",
                                         partition="tenant")
    assert changed > 0 and after > before
    want_before = _partitioned_ndcg(ds, ds.docs, doc_t, query_t, ref.val)
    nudged = read_vectors(conn, "p_best", ds.doc_ids, "part_docs")
    want_after = _partitioned_ndcg(ds, nudged, doc_t, query_t, ref.val)
    assert abs(before - want_before["ndcg"]) < 1e-9, (before, want_before)
    assert abs(after - want_after["ndcg"]) < 1e-9, (after, want_after)
    ev = conn.execute("SELECT queries, ndcg, recall FROM nudge_evaluate('part_docs', 'p_best', 'part_val_queries', "
                      "'scifact_val_qrels', partition => 'tenant')").fetchone()
    assert ev[0] == want_after["queries"]
    assert abs(ev[1] - want_after["ndcg"]) < 1e-9 and abs(ev[2] - want_after["recall"]) < 1e-9
    # unpartitioned, other tenants' documents rank too: a different (lower) number
    flat = conn.execute("SELECT ndcg FROM nudge_evaluate('part_docs', 'embedding', 'part_val_queries', "
                        "'scifact_val_qrels')").fetchone()[0]
    assert flat < before
    row = conn.execute("SELECT partition FROM nudge.fits ORDER BY fit_id DESC LIMIT 1").fetchone()
    assert row == ("tenant",)


def test_gamma_per_partition_equals_each_tenant_searched_alone(tenants, ref):
    """gamma_per_partition => true: every tenant (36-37 validation queries each) takes the gamma
    a fit of that tenant alone chooses, and its rows get that fit's vectors (1e-6); the
    reported validation after is numpy's tenant-filtered NDCG@10 on the stored vectors."""
    conn, doc_t, query_t = tenants
    ds = ref.ds
    joint, changed, before, after = _fit(conn, "part_docs", "part_train_queries", "scifact_train_qrels",
                                         "part_val_queries", "scifact_val_qrels", target="p_own",
                                         partition="tenant", gamma_per_partition=True)
    recorded = conn.execute("SELECT partition_gammas FROM nudge.fits ORDER BY fit_id DESC LIMIT 1").fetchone()[0]
    assert len(recorded) == TENANTS
    for t in range(TENANTS):
        alone = _fit(conn, f"part_docs_t{t}", f"part_train_queries_t{t}", f"part_train_qrels_t{t}",
                     f"part_val_queries_t{t}", f"part_val_qrels_t{t}", target="s_own")
        mine = recorded[f"t{t}"]
        assert mine["own"] and mine["queries"] == sum(1 for q in ref.val if query_t[q] == t
                                                      and any(s > 0 for s in ds.qrels.get(q, {}).values()))
        assert mine["gamma"] == alone[0], (t, mine, alone)
    p = read_vectors(conn, "p_own", ds.doc_ids, "part_docs").astype(np.float64)
    s = read_vectors(conn, "s_own", ds.doc_ids, "part_docs").astype(np.float64)
    assert np.abs(p - s).max() <= 1e-6
    want = _partitioned_ndcg(ds, read_vectors(conn, "p_own", ds.doc_ids, "part_docs"), doc_t, query_t, ref.val)
    assert abs(after - want["ndcg"]) < 1e-9, (after, want)
