"""nudge under the two most used Python clients of pgvector (issue 18, part 4).

SciFact is stored and searched through the clients' own APIs, with the precomputed
all-MiniLM-L6-v2 vectors of data/scifact/minilm (a fixed-vector Embeddings class: no model,
no network), labelled with the paper split (conftest's `ref`; the query and qrels tables of
`scifact_db`):

  * LangChain, `langchain_postgres.PGVector` (langchain-postgres 0.0.19): two collections in
    the one table `langchain_pg_embedding` (SciFact through `add_documents`, and a second
    collection holding copies of every other SciFact vector under other ids through
    `add_embeddings`). nudge fits a view of the first collection. Checked: the collection's
    test NDCG@10 through `similarity_search_by_vector(k=10)` improves; every row of the other
    collection is byte-equal (every column as text, and not even rewritten: same xmin);
    nudge's reported validation_before/after equal the NDCG@10 of the client's own
    collection-filtered search on the validation queries (1e-9, pytrec_eval); revert restores
    the view's rows exactly.
  * LlamaIndex, `llama_index.vector_stores.postgres.PGVectorStore` (0.9.0): nodes through
    `add(nodes)`; a fit of `data_scifact` without `id_column` stops with 23503 and a hint
    naming `node_id`; with `id_column => 'node_id'` retrieval through
    `query(VectorStoreQuery(...))` improves on the test queries.

No vector index is created (neither client creates one by default; the tests check it), so
the clients' searches are exact k-NN, the same ranking nudge's validation runs.

The clients are test-only dependencies (requirements-clients.txt, installed into the test venv
by scripts/setup.sh); each test skips with a note when its client cannot be imported.

Tolerances are the contract; do not loosen them to make a run pass.
"""
from __future__ import annotations

import gzip
import json
import os
import time

import numpy as np
import pytest

import nudge_ref as R
from conftest import DATA_DIR
from pg_util import DIM, parse_vec

K = 10
VALIDATION_TOL = 1e-9       # nudge's reported validation vs the client's own search
MIN_GAIN = 0.1              # test NDCG@10 gain through the client (measured: ~0.645 -> ~0.84)
BATCH = 1000                # documents per client ingestion call
INSTALL_NOTE = ("not installed: pip install -r requirements-clients.txt into the test venv "
                "(scripts/setup.sh does it)")

FIT_COLUMNS = ("fit_id", "method", "gamma", "records_changed", "validation_before",
               "validation_after")


# --------------------------------------------------------------------------- helpers

def _texts():
    """doc id -> 'title\\n\\ntext' of SciFact's corpus (unique per document)."""
    out = {}
    with gzip.open(os.path.join(DATA_DIR, "corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out[rec["_id"]] = rec["title"] + "\n\n" + rec["text"]
    return out


def _sqlalchemy_url(conn, driver):
    import sqlalchemy

    info = conn.info
    return sqlalchemy.engine.URL.create(
        f"postgresql+{driver}", username=info.user, password=info.password or None,
        host=info.host, port=info.port, database=info.dbname,
    ).render_as_string(hide_password=False)


def _client_metric(search, ds, qids):
    """Mean NDCG@10 (pytrec_eval, via nudge_ref.evaluate) of `search(vector) -> ranked ids`
    over `qids`, together with the ranked lists. The run gives rank r the score K - r, so
    pytrec_eval keeps exactly the client's order. The by-hand NDCG is checked to agree."""
    run, ranked = {}, {}
    for qid, row in zip(qids, ds.query_matrix(qids)):
        ids = search(row.tolist())
        assert len(ids) == K and len(set(ids)) == K, (qid, ids)
        ranked[qid] = ids
        run[qid] = {d: float(K - r) for r, d in enumerate(ids)}
    m = R.evaluate(run, ds.qrels_for(qids), k=K)
    assert m["queries"] == len([q for q in qids if any(s > 0 for s in ds.qrels.get(q, {}).values())])
    assert abs(m["ndcg"] - m["hand_ndcg"]) <= 1e-12, m
    return m["ndcg"], ranked


def _vector_indexes(conn, table):
    return conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s "
        "AND (indexdef ILIKE '%%USING hnsw%%' OR indexdef ILIKE '%%USING ivfflat%%')",
        (table,)).fetchall()


def _fit(conn, corpus, **kw):
    args = {"corpus": corpus, "queries": "scifact_train_queries",
            "qrels": "scifact_train_qrels", "vq": "scifact_val_queries",
            "vqr": "scifact_val_qrels", **kw}
    extra = ", id_column => %(id_column)s::text" if "id_column" in kw else ""
    row = conn.execute(
        f"SELECT {', '.join(FIT_COLUMNS)} FROM nudge_fit(%(corpus)s::regclass, 'embedding', "
        "%(queries)s::regclass, %(qrels)s::regclass, validation_queries => %(vq)s::regclass, "
        f"validation_qrels => %(vqr)s::regclass{extra})", args).fetchone()
    return dict(zip(FIT_COLUMNS, row))


def _evaluate(conn, corpus, split, id_column=None):
    extra = ", id_column => %s::text" if id_column else ""
    params = [corpus, f"scifact_{split}_queries", f"scifact_{split}_qrels"]
    if id_column:
        params.append(id_column)
    return conn.execute(
        "SELECT ndcg FROM nudge_evaluate(%s::regclass, 'embedding', %s::regclass, "
        f"%s::regclass, k => 10{extra})", params).fetchone()[0]


def _explain_mismatch(conn, view, ds, qids, ranked, what, idcol="id"):
    """On a validation mismatch: per-query differences and whether each is a tie (a pair of
    documents at the same distance at the cut or inside the top 10)."""
    lines = []
    for qid, ids in ranked.items():
        dists = conn.execute(
            f"SELECT {idcol}, embedding <=> %s::vector FROM {view} ORDER BY 2, {idcol} COLLATE \"C\" DESC "
            "LIMIT 11", ("[" + ",".join("%.9g" % v for v in ds.query_matrix([qid])[0]) + "]",)
        ).fetchall()
        nudge_order = [d for d, _ in dists[:K]]
        if nudge_order != ids:
            ds_ = [x for _, x in dists]
            ties = len(ds_) != len(set(ds_))
            lines.append(f"{qid}: client {ids} vs id-desc order {nudge_order}; ties={ties}")
    return f"{what}: " + ("; ".join(lines[:10]) or "no per-query ranking difference")


# --------------------------------------------------------------------------- LangChain

def test_langchain_collection_view(scifact_db, ref):
    lc = pytest.importorskip("langchain_postgres", reason=f"langchain-postgres {INSTALL_NOTE}",
                             exc_type=ImportError)
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings

    conn, ds = scifact_db.conn, ref.ds
    texts = _texts()

    class FixedEmbeddings(Embeddings):
        """Maps a known text to its precomputed vector (no model, no network)."""

        def __init__(self, table):
            self.table = table

        def embed_documents(self, texts_):
            return [self.table[t] for t in texts_]

        def embed_query(self, text):
            return self.table[text]

    vectors = {texts[d]: row.tolist() for d, row in zip(ds.doc_ids, ds.docs)}
    emb = FixedEmbeddings(vectors)
    url = _sqlalchemy_url(conn, "psycopg")
    store = lc.PGVector(embeddings=emb, collection_name="scifact", connection=url)
    other = lc.PGVector(embeddings=emb, collection_name="other", connection=url)
    try:
        t0 = time.perf_counter()
        docs = [Document(id=d, page_content=texts[d], metadata={"title": t})
                for d, t in zip(ds.doc_ids, ds.titles)]
        for i in range(0, len(docs), BATCH):
            store.add_documents(docs[i:i + BATCH])
        # the second collection: every other SciFact vector again, under other ids
        half = list(range(0, len(ds.doc_ids), 2))
        for i in range(0, len(half), BATCH):
            rows = half[i:i + BATCH]
            other.add_embeddings(texts=[texts[ds.doc_ids[r]] for r in rows],
                                 embeddings=[ds.docs[r].tolist() for r in rows],
                                 metadatas=[{"copy_of": ds.doc_ids[r]} for r in rows],
                                 ids=[f"other:{ds.doc_ids[r]}" for r in rows])
        print(f"\nLangChain ingestion of {len(docs) + len(half)} rows: "
              f"{time.perf_counter() - t0:.1f} s")

        assert _vector_indexes(conn, "langchain_pg_embedding") == []
        conn.execute("ANALYZE langchain_pg_embedding")
        conn.execute("""
            CREATE VIEW lc_scifact AS
            SELECT * FROM langchain_pg_embedding
             WHERE collection_id = (SELECT uuid FROM langchain_pg_collection WHERE name = 'scifact')
              WITH CHECK OPTION""")
        # the client stored the vectors bit for bit
        got = {i: parse_vec(t) for i, t in conn.execute("SELECT id, embedding::text FROM lc_scifact")}
        assert set(got) == set(ds.doc_ids)
        assert np.array_equal(np.stack([got[d] for d in ds.doc_ids]), ds.docs)

        snap_sql = ("SELECT id, xmin::text, collection_id::text, embedding::text, document, "
                    "cmetadata::text FROM langchain_pg_embedding WHERE collection_id = "
                    "(SELECT uuid FROM langchain_pg_collection WHERE name = %s) ORDER BY id")
        other_before = conn.execute(snap_sql, ("other",)).fetchall()
        view_before = conn.execute(
            "SELECT id, collection_id::text, embedding::text, document, cmetadata::text "
            "FROM lc_scifact ORDER BY id").fetchall()
        assert len(other_before) == len(half) and len(view_before) == len(ds.doc_ids)

        def search(v):
            return [d.id for d in store.similarity_search_by_vector(v, k=K)]

        t0 = time.perf_counter()
        val_before, val_ranked_before = _client_metric(search, ds, ref.val)
        test_before, _ = _client_metric(search, ds, ref.test)
        print(f"LangChain search, {len(ref.val) + len(ref.test)} queries: "
              f"{time.perf_counter() - t0:.1f} s")
        # nudge's exact k-NN over the view is the client's collection-filtered search
        assert abs(_evaluate(conn, "lc_scifact", "test") - test_before) <= VALIDATION_TOL

        t0 = time.perf_counter()
        fit = _fit(conn, "lc_scifact")
        print(f"fit through the view: {time.perf_counter() - t0:.1f} s, {fit}")
        assert fit["records_changed"] > 0

        val_after, val_ranked_after = _client_metric(search, ds, ref.val)
        test_after, _ = _client_metric(search, ds, ref.test)
        print(f"LangChain client NDCG@10: validation {val_before:.4f} -> {val_after:.4f}, "
              f"test {test_before:.4f} -> {test_after:.4f}")

        # (c) what nudge reports is what the application's filtered search gives
        assert abs(fit["validation_before"] - val_before) <= VALIDATION_TOL, _explain_mismatch(
            conn, "lc_scifact", ds, ref.val, val_ranked_before,
            f"validation_before {fit['validation_before']} vs client {val_before}")
        # (a) the collection's retrieval improves through the client
        assert test_after > test_before + MIN_GAIN, (test_before, test_after)
        # (b) the other collection is untouched: every column byte-equal, rows not rewritten
        assert conn.execute(snap_sql, ("other",)).fetchall() == other_before
        # the fit's validation after, checked once the view's vectors are as written
        assert abs(fit["validation_after"] - val_after) <= VALIDATION_TOL, _explain_mismatch(
            conn, "lc_scifact", ds, ref.val, val_ranked_after,
            f"validation_after {fit['validation_after']} vs client {val_after}")

        # (d) revert restores the view's rows exactly, and still leaves the other collection
        conn.execute("SELECT nudge_revert(%s)", (fit["fit_id"],))
        assert conn.execute(
            "SELECT id, collection_id::text, embedding::text, document, cmetadata::text "
            "FROM lc_scifact ORDER BY id").fetchall() == view_before
        assert conn.execute(snap_sql, ("other",)).fetchall() == other_before
        assert _client_metric(search, ds, ref.test)[0] == test_before
    finally:
        for s in (store, other):
            s._engine.dispose()


# --------------------------------------------------------------------------- LlamaIndex

def test_llamaindex_node_id(scifact_db, ref):
    pytest.importorskip("llama_index.vector_stores.postgres",
                        reason=f"llama-index-vector-stores-postgres {INSTALL_NOTE}",
                        exc_type=ImportError)
    import psycopg
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores import VectorStoreQuery
    from llama_index.vector_stores.postgres import PGVectorStore

    conn, ds = scifact_db.conn, ref.ds
    texts = _texts()
    store = PGVectorStore.from_params(
        connection_string=_sqlalchemy_url(conn, "psycopg2"),
        async_connection_string=_sqlalchemy_url(conn, "asyncpg"),
        table_name="scifact", embed_dim=DIM)
    try:
        t0 = time.perf_counter()
        nodes = [TextNode(id_=d, text=texts[d], embedding=row.tolist())
                 for d, row in zip(ds.doc_ids, ds.docs)]
        for i in range(0, len(nodes), BATCH):
            store.add(nodes[i:i + BATCH])
        print(f"\nLlamaIndex ingestion of {len(nodes)} nodes: {time.perf_counter() - t0:.1f} s")

        assert _vector_indexes(conn, "data_scifact") == []
        conn.execute("ANALYZE data_scifact")
        got = {i: parse_vec(t) for i, t in conn.execute(
            "SELECT node_id, embedding::text FROM data_scifact")}
        assert set(got) == set(ds.doc_ids)
        assert np.array_equal(np.stack([got[d] for d in ds.doc_ids]), ds.docs)

        def search(v):
            return store.query(VectorStoreQuery(query_embedding=v, similarity_top_k=K)).ids

        test_before, _ = _client_metric(search, ds, ref.test)
        val_before, val_ranked_before = _client_metric(search, ds, ref.val)
        assert abs(_evaluate(conn, "data_scifact", "test", "node_id") - test_before) \
            <= VALIDATION_TOL

        # the labels hold node ids; `id` is LlamaIndex's serial: 23503, the hint names node_id
        with pytest.raises(psycopg.errors.ForeignKeyViolation) as err:
            _fit(conn, "data_scifact")
        print(f"without id_column: {err.value.diag.message_primary} / "
              f"HINT: {err.value.diag.message_hint}")
        assert "node_id" in (err.value.diag.message_hint or ""), err.value.diag.message_hint
        assert "id_column => 'node_id'" in err.value.diag.message_hint

        t0 = time.perf_counter()
        fit = _fit(conn, "data_scifact", id_column="node_id")
        print(f"fit with id_column => 'node_id': {time.perf_counter() - t0:.1f} s, {fit}")
        test_after, _ = _client_metric(search, ds, ref.test)
        val_after, val_ranked_after = _client_metric(search, ds, ref.val)
        print(f"LlamaIndex client NDCG@10: validation {val_before:.4f} -> {val_after:.4f}, "
              f"test {test_before:.4f} -> {test_after:.4f}")
        assert test_after > test_before + MIN_GAIN, (test_before, test_after)
        assert abs(fit["validation_before"] - val_before) <= VALIDATION_TOL, _explain_mismatch(
            conn, "data_scifact", ds, ref.val, val_ranked_before, "validation_before", "node_id")
        assert abs(fit["validation_after"] - val_after) <= VALIDATION_TOL, _explain_mismatch(
            conn, "data_scifact", ds, ref.val, val_ranked_after, "validation_after", "node_id")
    finally:
        store._engine.dispose() if getattr(store, "_engine", None) else None
