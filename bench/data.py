"""Benchmark data: SciFact (shipped, paper split) and synthetic clustered corpora with planted
relevant records, generated deterministically so that nudge-ft (in memory) and the database
(loaded once with binary COPY, reused while the parameters match) see the same vectors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common import DIM, R, ROOT, connect, copy_qrels, copy_text_vectors, copy_vectors, log, meta_matches, set_meta

SCIFACT_DIR = ROOT / "data" / "scifact"
SYNTH_VERSION = 3
INTENT_OFFSET = 2.0  # norm of the per-record offset of its queries' centre
N_HOT = 5_000  # records that queries are about (at most n // 4)
QUERY_NOISE = 3.0  # norm of the noise added to a query (relevant records have norm ~1)


def _normalize(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@dataclass
class Corpus:
    """Row i of docs has id doc_ids[i]; query sets hold (ids, float32 vectors, [[doc row]])."""
    name: str
    doc_ids: list
    docs: np.ndarray
    sets: dict  # role -> (query ids, vectors, relevant doc rows per query)


def synth_params(n, n_train=10_000, n_val=1_000, n_test=1_000, seed=0):
    return {"version": SYNTH_VERSION, "n": n, "dim": DIM, "n_train": n_train, "n_val": n_val,
            "n_test": n_test, "seed": seed}


def synth(n, n_train=10_000, n_val=1_000, n_test=1_000, seed=0):
    """Clustered unit vectors: n // 200 cluster centres, record = centre + noise of norm ~1
    (same-cluster cosine ~0.5). Hot records: min(n // 4, N_HOT) random records, each with an
    "intent" = record + a random offset of norm INTENT_OFFSET. Each query has one relevant hot
    record (30%: a second one from the same cluster when there is one) and is the mean of their
    intents plus noise of norm QUERY_NOISE. Without fine-tuning the relevant record is often
    not first; moving it toward its training queries helps the held-out ones. Queries
    0..n_train-1 train, then validation, then test."""
    rng = np.random.default_rng(seed)
    n_clusters = max(10, n // 200)
    centers = _normalize(rng.standard_normal((n_clusters, DIM))).astype(np.float32)
    assign = rng.integers(n_clusters, size=n)
    docs = np.empty((n, DIM), dtype=np.float32)
    sigma = np.float32(1.0 / np.sqrt(DIM))
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        block = centers[assign[s:e]] + sigma * rng.standard_normal((e - s, DIM), dtype=np.float32)
        docs[s:e] = block / np.linalg.norm(block, axis=1, keepdims=True)
    hot = rng.choice(n, size=min(n // 4, N_HOT), replace=False)
    hot_by_cluster = {}
    for h in hot:
        hot_by_cluster.setdefault(int(assign[h]), []).append(int(h))
    nq = n_train + n_val + n_test
    rel = []
    for _ in range(nq):
        a = int(hot[rng.integers(len(hot))])
        r = [a]
        if rng.random() < 0.3:
            same = hot_by_cluster[int(assign[a])]
            b = int(same[rng.integers(len(same))]) if len(same) > 1 else int(hot[rng.integers(len(hot))])
            if b != a:
                r.append(b)
        rel.append(r)
    # Queries do not scatter around the record itself (then the record would already be the
    # best place for it) but around an "intent" offset from it, as real query embeddings sit
    # apart from document embeddings: the gap NUDGE closes.
    intent = {int(h): docs[h] + np.float32(INTENT_OFFSET / np.sqrt(DIM)) * rng.standard_normal(DIM, dtype=np.float32)
              for h in hot}
    qv = np.stack([np.mean([intent[d] for d in r], axis=0) for r in rel])
    qv = qv + np.float32(QUERY_NOISE / np.sqrt(DIM)) * rng.standard_normal(qv.shape, dtype=np.float32)
    qv = _normalize(qv).astype(np.float32)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, nq)}
    sets = {role: (list(range(a, b)), qv[a:b], rel[a:b]) for role, (a, b) in bounds.items()}
    return Corpus(f"syn_{tag(n)}", list(range(n)), docs, sets)


def tag(n):
    return f"{n // 1_000_000}m" if n % 1_000_000 == 0 else f"{n // 1000}k"


def scifact():
    """SciFact minilm with the paper's 70/10/20 split (seed 0)."""
    ds = R.load_scifact(str(SCIFACT_DIR))
    train, val, test = R.paper_split(ds, 0)
    sets = {}
    for role, ids in (("train", train), ("val", val), ("test", test)):
        rel = [[ds.doc_row[d] for d, s in ds.qrels[q].items() if s > 0] for q in ids]
        sets[role] = (ids, ds.query_matrix(ids), rel)
    return Corpus("sf", ds.doc_ids, ds.docs, sets)


def load(corpus: Corpus, params, force=False):
    """Create <name>_docs, <name>_{train,val,test}_queries / _qrels unless bench_meta says
    they already hold exactly this data."""
    with connect() as c:
        if not force and meta_matches(c, corpus.name, params):
            log(f"{corpus.name}: tables up to date")
            return
        text_ids = isinstance(corpus.doc_ids[0], str)
        idt = "text" if text_ids else "bigint"
        log(f"{corpus.name}: loading {len(corpus.doc_ids)} records")
        c.execute(f"DROP TABLE IF EXISTS {corpus.name}_docs CASCADE")
        c.execute(f"CREATE TABLE {corpus.name}_docs (id {idt} PRIMARY KEY, embedding vector({DIM}))")
        if text_ids:
            copy_text_vectors(c, f"{corpus.name}_docs", corpus.doc_ids, corpus.docs)
        else:
            copy_vectors(c, f"{corpus.name}_docs", np.asarray(corpus.doc_ids, dtype=np.int64), corpus.docs)
        for role, (qids, qv, rel) in corpus.sets.items():
            q, r = f"{corpus.name}_{role}_queries", f"{corpus.name}_{role}_qrels"
            c.execute(f"DROP TABLE IF EXISTS {q}, {r}")
            c.execute(f"CREATE TABLE {q} (id {idt} PRIMARY KEY, embedding vector({DIM}))")
            c.execute(f"CREATE TABLE {r} (query_id {idt}, doc_id {idt}, score int)")
            if text_ids:
                copy_text_vectors(c, q, qids, qv)
            else:
                copy_vectors(c, q, np.asarray(qids, dtype=np.int64), qv)
            copy_qrels(c, r, [(qid, corpus.doc_ids[d], 1) for qid, ds_ in zip(qids, rel) for d in ds_])
        c.execute(f"VACUUM ANALYZE {corpus.name}_docs")
        c.execute("ANALYZE")
        set_meta(c, corpus.name, params)
        log(f"{corpus.name}: loaded")
