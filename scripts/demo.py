"""The nudge demo: SciFact in pgvector tables, fine-tuned in the database.

Loads data/scifact (5,183 abstracts with all-MiniLM-L6-v2 embeddings) into a fresh database,
splits the labelled claims 70/10/20 (train / validation / test, numpy seed 0, as in the
NUDGE paper), then shows test NDCG@10 and recall@10 before and after one nudge_fit call,
and one search whose ranking the fit changed. Connection settings come from PG* variables.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

DATA = Path(__file__).resolve().parent.parent / "data" / "scifact"
DB = os.environ.get("NUDGE_DEMO_DB", "nudge_demo")


def load_scifact():
    ids = (DATA / "minilm" / "corpus_ids.txt").read_text().split()
    emb = np.load(DATA / "minilm" / "corpus.npy")
    qids = (DATA / "minilm" / "query_ids.txt").read_text().split()
    qemb = np.load(DATA / "minilm" / "queries.npy")
    titles = {}
    with gzip.open(DATA / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            d = json.loads(line)
            titles[d["_id"]] = d["title"]
    texts = {}
    for line in (DATA / "queries.jsonl").read_text().splitlines():
        d = json.loads(line)
        texts[d["_id"]] = d["text"]
    qrels = {}
    for name in ("train", "test"):
        for line in (DATA / "qrels" / f"{name}.tsv").read_text().splitlines()[1:]:
            q, d, s = line.split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    # the paper's protocol: labelled queries in file order, permuted with seed 0
    order = [json.loads(l)["_id"] for l in (DATA / "queries.jsonl").read_text().splitlines()]
    labelled = [q for q in order if q in qrels]
    np.random.seed(0)
    perm = np.random.permutation(len(labelled))
    n_train, n_val = int(0.7 * len(labelled)), int(0.1 * len(labelled))
    split = {
        "train": [labelled[i] for i in perm[:n_train]],
        "val": [labelled[i] for i in perm[n_train:n_train + n_val]],
        "test": [labelled[i] for i in perm[n_train + n_val:]],
    }
    qvec = dict(zip(qids, qemb))
    return ids, emb, titles, texts, qvec, qrels, split


def vec(row) -> str:
    return "[" + ",".join("%.9g" % v for v in row.tolist()) + "]"


class ProgressBar:
    """Renders nudge's progress NOTICEs as a one-line bar."""

    pattern = re.compile(r"^(\w+): ([^:]+): (\d+)(?: of (\d+))?")

    def __init__(self):
        self.active = False

    def __call__(self, diag):
        m = self.pattern.match(diag.message_primary or "")
        if not m:
            print(f"  {diag.severity}: {diag.message_primary}")
            return
        _, phase, done, total = m.groups()
        if total:
            frac = min(int(done) / int(total), 1.0)
            bar = "#" * int(frac * 30)
            line = f"  {phase:<28} [{bar:<30}] {int(done):>7}/{total}"
        else:
            line = f"  {phase:<28} {done}"
        sys.stdout.write("\r" + line.ljust(80))
        sys.stdout.flush()
        self.active = True

    def done(self):
        if self.active:
            sys.stdout.write("\n")
            self.active = False


def main():
    ids, emb, titles, texts, qvec, qrels, split = load_scifact()
    with psycopg.connect(dbname="postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DB}"')
        admin.execute(f'CREATE DATABASE "{DB}"')
    conn = psycopg.connect(dbname=DB, autocommit=True)
    bar = ProgressBar()
    conn.add_notice_handler(bar)
    conn.execute("CREATE EXTENSION vector")
    conn.execute("CREATE EXTENSION nudge")

    t0 = time.time()
    conn.execute("CREATE TABLE docs (id text PRIMARY KEY, title text, embedding vector(384))")
    with conn.cursor().copy("COPY docs (id, title, embedding) FROM STDIN") as cp:
        for i, d in enumerate(ids):
            cp.write_row((d, titles.get(d, ""), vec(emb[i])))
    for part, qs in split.items():
        conn.execute(f"CREATE TABLE {part}_queries (id text PRIMARY KEY, text text, embedding vector(384))")
        conn.execute(f"CREATE TABLE {part}_qrels (query_id text, doc_id text, score int)")
        with conn.cursor().copy(f"COPY {part}_queries FROM STDIN") as cp:
            for q in qs:
                cp.write_row((q, texts[q], vec(qvec[q])))
        with conn.cursor().copy(f"COPY {part}_qrels FROM STDIN") as cp:
            for q in qs:
                for d, s in qrels[q].items():
                    cp.write_row((q, d, s))
    conn.execute("CREATE INDEX docs_embedding_hnsw ON docs USING hnsw (embedding vector_cosine_ops)")
    conn.execute("ANALYZE")
    print(f"Loaded SciFact: {len(ids)} documents, queries train/val/test = "
          f"{len(split['train'])}/{len(split['val'])}/{len(split['test'])}, HNSW index built "
          f"({time.time() - t0:.1f} s).\n")

    evaluate = ("SELECT ndcg, recall FROM nudge_evaluate('docs', 'embedding', 'test_queries', "
                "'test_qrels', k => 10)")
    before = conn.execute(evaluate).fetchone()

    def top(qid, n=10):
        return [r[0] for r in conn.execute(
            "SELECT d.id FROM docs d ORDER BY d.embedding <=> "
            "(SELECT embedding FROM test_queries WHERE id = %s) LIMIT %s", (qid, n))]

    ranked_before = {q: top(q) for q in split["test"]}

    print("SELECT * FROM nudge_fit('docs', 'embedding', 'train_queries', 'train_qrels',\n"
          "                        validation_queries => 'val_queries', validation_qrels => 'val_qrels');")
    conn.execute("SET nudge.progress_interval = 0")
    conn.execute("SET nudge.batch_rows = 500")
    row = conn.execute(
        "SELECT fit_id, method, gamma, records_changed, validation_before, validation_after, seconds "
        "FROM nudge_fit('docs', 'embedding', 'train_queries', 'train_qrels', "
        "validation_queries => 'val_queries', validation_qrels => 'val_qrels')").fetchone()
    bar.done()
    fit_id, method, gamma, changed, vb, va, secs = row
    print(f"  fit {fit_id}: {method}, gamma = {gamma:.4f}, {changed} documents moved, "
          f"validation NDCG@10 {vb:.4f} -> {va:.4f}, {secs:.2f} s\n")
    conn.execute("RESET nudge.progress_interval")
    after = conn.execute(evaluate).fetchone()

    print("Test queries (never seen by the fit), exact k-NN, cosine:")
    print(f"  {'':14}{'before':>10}{'after':>10}")
    print(f"  {'NDCG@10':14}{before[0]:>10.4f}{after[0]:>10.4f}")
    print(f"  {'recall@10':14}{before[1]:>10.4f}{after[1]:>10.4f}\n")

    # the test query whose best relevant document moved up the most (through the HNSW index)
    best = None
    for q in split["test"]:
        rel = set(qrels[q])
        now = top(q)
        rb = min([ranked_before[q].index(d) for d in rel if d in ranked_before[q]] or [99])
        ra = min([now.index(d) for d in rel if d in now] or [99])
        if best is None or rb - ra > best[0]:
            best = (rb - ra, q, now)
    _, q, now = best
    print(f'One search, SELECT id, title FROM docs ORDER BY embedding <=> $claim LIMIT 5;\n  claim: "{texts[q]}"')
    for label, lst in (("before", ranked_before[q]), ("after", now)):
        print(f"  {label}:")
        for i, d in enumerate(lst[:5], 1):
            mark = "*" if d in qrels[q] else " "
            print(f"    {i}. {mark} {titles[d][:90]}")
    print("  (* = labelled relevant)\n")
    print("Undo with: SELECT nudge_revert(%d);   History: SELECT * FROM nudge.fits;" % fit_id)


if __name__ == "__main__":
    main()
