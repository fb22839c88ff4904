#!/usr/bin/env python3
"""Plain numpy reference implementation of NUDGE, written from NUDGE.md alone.

It exists to check the extension (and the Rust core) against something small and
readable. Everything is computed in float64 from the float32 inputs; nothing here
depends on the Rust code or on nudge-ft.

Contents
    load_scifact(dir)             SciFact in BEIR layout + minilm/ embeddings
    paper_split(ds)               the NUDGE paper's query split (776 / 110 / 223 on SciFact)
    gradients(...)                G_i = sum of the raw training queries relevant to record i
    nudge_m(...), nudge_n(...)    the closed forms, incl. the reference's "leave unchanged" rules
    knn(...)                      exact k-NN; ties broken by record id, descending
    evaluate(...)                 NDCG@k, recall@k (pytrec_eval), capped recall@k, MRR@k (by hand)
    select_gamma_nudge_n_reference(...)   nudge-ft's 25-point grid, first max of top-1 accuracy
    select_gamma_nudge_m_reference(...)   nudge-ft's exact top-1 interval sweep

Conventions (documented because the extension has to match them):
    * Record ids and query ids are strings. Ties in score are broken by record id
      DESCENDING, comparing the ids as byte strings (C collation), which is trec_eval's rule
      (strcmp on docno). For SciFact's numeric ids this is not numeric order: "9" > "10".
    * A qrels row counts as "relevant" when its score is > 0 (trec_eval's default
      relevance level 1). Graded scores are used as NDCG gains.
    * "Capped recall@k" = relevant in top k / min(k, #relevant) (what the NUDGE paper calls
      recall). "Recall@k" = relevant in top k / #relevant (trec_eval's recall_k).
    * MRR@k = 1 / rank of the first relevant record within the top k, else 0.

Run as a script to reproduce NUDGE.md's "Measured here" table:
    python tests/reference/nudge_ref.py data/scifact
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

# nudge-ft's NUDGE-N grid: 0, 0.02, ..., 0.48 (computed the same way, 0.02 * x).
NUDGE_N_GRID = [0.02 * x for x in range(25)]


# --------------------------------------------------------------------------- data

@dataclass
class SciFact:
    doc_ids: list            # record ids, in the row order of minilm/corpus.npy
    titles: list             # title of each record, same order
    docs: np.ndarray         # float32 (N, dim) as stored
    query_ids: list          # every query id, in queries.jsonl order
    queries: np.ndarray      # float32 (Nq, dim), row i = query_ids[i]
    qrels: dict              # query id -> {doc id: score}, all qrels files pooled
    doc_row: dict = field(default_factory=dict)    # doc id -> row
    query_row: dict = field(default_factory=dict)  # query id -> row

    def query_matrix(self, ids):
        return self.queries[[self.query_row[q] for q in ids]]

    def qrels_for(self, ids):
        return {q: dict(self.qrels[q]) for q in ids if q in self.qrels}


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.rstrip("\n") != ""]


def load_qrels(qrels_dir):
    """Pool every qrels/*.tsv (BEIR: header 'query-id corpus-id score')."""
    qrels = {}
    for name in sorted(os.listdir(qrels_dir)):
        if not name.endswith(".tsv"):
            continue
        with open(os.path.join(qrels_dir, name), encoding="utf-8") as f:
            header = f.readline().rstrip("\n").split("\t")
            assert header[:2] == ["query-id", "corpus-id"], (name, header)
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                qid, did, score = line.split("\t")
                qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def load_scifact(directory):
    """Load SciFact from `directory` (data/scifact or /work/shared/datasets/scifact)."""
    doc_ids = _read_lines(os.path.join(directory, "minilm", "corpus_ids.txt"))
    docs = np.load(os.path.join(directory, "minilm", "corpus.npy"))
    emb_query_ids = _read_lines(os.path.join(directory, "minilm", "query_ids.txt"))
    emb_queries = np.load(os.path.join(directory, "minilm", "queries.npy"))
    assert docs.dtype == np.float32 and emb_queries.dtype == np.float32
    assert docs.shape[0] == len(doc_ids) and emb_queries.shape[0] == len(emb_query_ids)

    titles_by_id = {}
    with gzip.open(os.path.join(directory, "corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            titles_by_id[rec["_id"]] = rec["title"]
    assert set(titles_by_id) == set(doc_ids)

    query_ids = []
    with open(os.path.join(directory, "queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                query_ids.append(json.loads(line)["_id"])
    emb_row = {q: i for i, q in enumerate(emb_query_ids)}
    queries = emb_queries[[emb_row[q] for q in query_ids]]

    ds = SciFact(
        doc_ids=doc_ids,
        titles=[titles_by_id[d] for d in doc_ids],
        docs=docs,
        query_ids=query_ids,
        queries=queries,
        qrels=load_qrels(os.path.join(directory, "qrels")),
    )
    ds.doc_row = {d: i for i, d in enumerate(doc_ids)}
    ds.query_row = {q: i for i, q in enumerate(query_ids)}
    return ds


def paper_split(ds, seed=0, train_fraction=0.7, val_fraction=0.1):
    """The NUDGE paper's protocol as NUDGE.md states it for SciFact.

    Queries with at least one relevant record in any qrels file, in queries.jsonl order;
    np.random.seed(seed); perm = np.random.permutation(n); the first int(0.7 n) are train,
    the next int(0.1 n) validation, the rest test. (The paper also caps validation and test
    at 10,000 queries, which never binds on SciFact.)
    """
    eligible = [q for q in ds.query_ids
                if any(s > 0 for s in ds.qrels.get(q, {}).values())]
    n = len(eligible)
    np.random.seed(seed)
    perm = np.random.permutation(n)
    n_train = int(train_fraction * n)
    n_val = int(val_fraction * n)
    train = [eligible[i] for i in perm[:n_train]]
    val = [eligible[i] for i in perm[n_train:n_train + n_val]]
    test = [eligible[i] for i in perm[n_train + n_val:]]
    return train, val, test


# --------------------------------------------------------------------------- NUDGE

def normalize_rows(x):
    """L2-normalise rows in float64; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def gradients(doc_row, n_docs, train_queries, train_query_ids, qrels):
    """G_i = sum of the raw training query embeddings q_j over every j with i in A_j."""
    dim = train_queries.shape[1]
    G = np.zeros((n_docs, dim), dtype=np.float64)
    for q_vec, qid in zip(np.asarray(train_queries, dtype=np.float64), train_query_ids):
        for did, score in qrels.get(qid, {}).items():
            if score > 0:
                G[doc_row[did]] += q_vec
    return G


def nudge_m(D, G, gamma, negative_rule="move"):
    """NUDGE-M: d'_i = d^_i + gamma * G_i / |G_i|.  Returns (new float64 (N, dim), changed mask).

    Records with G_i = 0 never move (they are returned as d^_i). nudge-ft applies no other
    rule to NUDGE-M ("move"); negative_rule="skip" also leaves records with d^_i . G_i < 0.
    """
    Dh = normalize_rows(D)
    g = normalize_rows(G)
    moving = np.linalg.norm(G, axis=1) > 0
    if negative_rule == "skip":
        moving &= np.einsum("ij,ij->i", Dh, G) >= 0
    elif negative_rule != "move":
        raise ValueError(negative_rule)
    changed = moving & (gamma != 0)
    out = Dh.copy()
    out[changed] = Dh[changed] + gamma * g[changed]
    return out, changed


def nudge_n_parts(D, G, negative_rule="skip"):
    """The per-record quantities NUDGE-N needs, independent of gamma.

    Returns Dh (unit records), g (unit G), z (unit part of G orthogonal to d^),
    cos_theta (= d^ . g) and `moves`, the records that the method may move:
    G != 0, G not parallel to d^, and (negative_rule "skip") d^ . G >= 0.
    """
    Dh = normalize_rows(D)
    g = normalize_rows(G)
    gnorm = np.linalg.norm(G, axis=1)
    dG = np.einsum("ij,ij->i", Dh, G)
    perp = G - dG[:, None] * Dh
    pnorm = np.linalg.norm(perp, axis=1)
    z = np.divide(perp, pnorm[:, None], out=np.zeros_like(perp), where=pnorm[:, None] > 0)
    # "Parallel": the orthogonal part vanishes relative to |G| (float64 round-off level).
    parallel = pnorm <= 1e-12 * np.maximum(gnorm, 1e-300)
    moves = (gnorm > 0) & ~parallel
    if negative_rule == "skip":
        moves &= dG >= 0
    elif negative_rule != "move":
        raise ValueError(negative_rule)
    cos_theta = np.einsum("ij,ij->i", Dh, g)
    return Dh, g, z, cos_theta, moves


def nudge_n(D, G, gamma, negative_rule="skip", parts=None):
    """NUDGE-N closed form (NUDGE.md).  Returns (new float64 (N, dim), changed mask).

    x_i = g_i                                             if d^_i . g_i >= 1 - gamma/2
    x_i = (1 - gamma/2) d^_i + sqrt(gamma(4-gamma))/2 z_i  otherwise
    Static records (G = 0), records with G parallel to d^, and (rule "skip", nudge-ft's
    heuristic) records with d^ . G < 0 are left as d^.
    """
    Dh, g, z, cos_theta, moves = parts if parts is not None else nudge_n_parts(D, G, negative_rule)
    out = Dh.copy()
    if gamma == 0:
        return out, np.zeros(len(Dh), dtype=bool)
    c = 1.0 - gamma / 2.0
    s = 0.5 * math.sqrt(gamma * (4.0 - gamma))
    to_g = moves & (cos_theta >= c)
    along = moves & ~to_g
    out[to_g] = g[to_g]
    out[along] = c * Dh[along] + s * z[along]
    return out, moves.copy()


# --------------------------------------------------------------------------- k-NN

def tie_rank(doc_ids):
    """rank[i] = position of doc_ids[i] in ascending byte (C collation) order."""
    order = sorted(range(len(doc_ids)), key=lambda i: doc_ids[i].encode("utf-8"))
    rank = np.empty(len(doc_ids), dtype=np.int64)
    rank[order] = np.arange(len(doc_ids))
    return rank


def scores(Q, D, distance="cosine"):
    """Similarity matrix (float64): larger is better."""
    Q = np.asarray(Q, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    if distance == "cosine":
        return normalize_rows(Q) @ normalize_rows(D).T
    if distance == "inner_product":
        return Q @ D.T
    if distance == "l2":
        d2 = (Q * Q).sum(1)[:, None] - 2.0 * (Q @ D.T) + (D * D).sum(1)[None, :]
        return -np.sqrt(np.maximum(d2, 0.0))
    raise ValueError(distance)


def knn(Q, D, k, doc_ids, distance="cosine", rank=None):
    """Exact top-k per query row. Returns (rows (nq, k) int, scores (nq, k) float64).

    Order: score descending, then record id descending (byte order), as trec_eval sorts.
    """
    S = scores(Q, D, distance)
    if rank is None:
        rank = tie_rank(doc_ids)
    k = min(k, S.shape[1])
    rows = np.empty((S.shape[0], k), dtype=np.int64)
    for qi in range(S.shape[0]):
        s = S[qi]
        kth = np.partition(s, s.size - k)[s.size - k]      # k-th largest score
        cand = np.nonzero(s >= kth)[0]                      # all records tied with it too
        order = np.lexsort((-rank[cand], -s[cand]))
        rows[qi] = cand[order[:k]]
    return rows, np.take_along_axis(S, rows, axis=1)


def run_dict(query_ids, rows, row_scores, doc_ids):
    return {q: {doc_ids[r]: float(v) for r, v in zip(rows[i], row_scores[i])}
            for i, q in enumerate(query_ids)}


# --------------------------------------------------------------------------- metrics

def hand_metrics(ranked_doc_ids, rel, k):
    """Per-query metrics by hand from a ranked list and {doc id: grade}."""
    relevant = {d for d, s in rel.items() if s > 0}
    top = ranked_doc_ids[:k]
    hits = sum(1 for d in top if d in relevant)
    dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top) if rel.get(d, 0) > 0)
    ideal = sorted((s for s in rel.values() if s > 0), reverse=True)[:k]
    idcg = sum(s / math.log2(i + 2) for i, s in enumerate(ideal))
    mrr = 0.0
    for i, d in enumerate(top):
        if d in relevant:
            mrr = 1.0 / (i + 1)
            break
    return {
        "ndcg": dcg / idcg if idcg > 0 else 0.0,
        "recall": hits / len(relevant),
        "capped_recall": hits / min(k, len(relevant)),
        "mrr": mrr,
    }


def evaluate(run, qrels, k=10, per_query=False):
    """Mean metrics over the queries of `run` that have at least one relevant record.

    ndcg and recall come from pytrec_eval (ndcg_cut_k, recall_k); capped_recall and mrr are
    computed by hand on the same ordering (score desc, doc id desc). `hand_ndcg` /
    `hand_recall` are the by-hand versions of the first two, as a cross-check.
    """
    import pytrec_eval

    qids = [q for q in run if any(s > 0 for s in qrels.get(q, {}).values())]
    judged = {q: {d: int(s) for d, s in qrels[q].items()} for q in qids}
    ev = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{k}", f"recall.{k}"})
    res = ev.evaluate({q: run[q] for q in qids})
    per = {}
    for q in qids:
        ranked = sorted(run[q].items(), key=lambda kv: (-kv[1], _neg_bytes(kv[0])))
        h = hand_metrics([d for d, _ in ranked], judged[q], k)
        per[q] = {
            "ndcg": res[q][f"ndcg_cut_{k}"],
            "recall": res[q][f"recall_{k}"],
            "capped_recall": h["capped_recall"],
            "mrr": h["mrr"],
            "hand_ndcg": h["ndcg"],
            "hand_recall": h["recall"],
        }
    out = {"queries": len(qids)}
    for m in ("ndcg", "recall", "capped_recall", "mrr", "hand_ndcg", "hand_recall"):
        out[m] = float(np.mean([per[q][m] for q in qids])) if qids else float("nan")
    if per_query:
        out["per_query"] = per
    return out


class _neg_bytes:
    """Sort key giving descending byte order of a string."""
    __slots__ = ("b",)

    def __init__(self, s):
        self.b = s.encode("utf-8")

    def __lt__(self, other):
        return self.b > other.b

    def __eq__(self, other):
        return self.b == other.b


def evaluate_embeddings(D, doc_ids, Q, query_ids, qrels, k=10, distance="cosine", rank=None):
    rows, sc = knn(Q, D, k, doc_ids, distance, rank)
    return evaluate(run_dict(query_ids, rows, sc, doc_ids), qrels, k)


# --------------------------------------------------------------------------- gamma selection

def _relevant_rows(query_ids, qrels, doc_row):
    return [[doc_row[d] for d, s in qrels.get(q, {}).items() if s > 0] for q in query_ids]


def top1_accuracy(D_new, Qv, val_rel_rows, rank):
    """nudge-ft's validation accuracy with val_k = 1: mean of hit / min(#relevant, 1)."""
    rows, _ = knn(Qv, D_new, 1, None, "inner_product", rank)
    return float(np.mean([1.0 if rows[i, 0] in set(r) else 0.0
                          for i, r in enumerate(val_rel_rows)]))


def select_gamma_nudge_n_reference(D, G, Qv, val_query_ids, val_qrels, doc_ids,
                                   negative_rule="skip", grid=NUDGE_N_GRID):
    """nudge-ft's NUDGE-N rule: rebuild everything for each grid value, score every
    validation query against the whole corpus, keep the FIRST gamma with the best top-1
    accuracy. Returns (gamma, [(gamma, accuracy), ...])."""
    rank = tie_rank(doc_ids)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    rel_rows = _relevant_rows(val_query_ids, val_qrels, doc_row)
    parts = nudge_n_parts(D, G, negative_rule)
    best, best_acc, curve = 0.0, -1.0, []
    for gamma in grid:
        new, _ = nudge_n(D, G, gamma, parts=parts)
        acc = top1_accuracy(new, Qv, rel_rows, rank)
        curve.append((gamma, acc))
        if acc > best_acc:
            best, best_acc = gamma, acc
    return best, curve


def nudge_m_intervals(D, G, Qv, val_rel_rows, rank, negative_rule="move"):
    """For every (validation query, relevant record x): the interval of gamma >= 0 on which
    x ranks first under NUDGE-M. Score of record i: S_i + gamma * H_i with S_i = q.d^_i and
    H_i = q.g_i (linear in gamma).

    x is first iff for every i != x:  a_i >= gamma * b_i  with  a_i = S_x - S_i  (x's margin
    at gamma = 0) and  b_i = H_i - H_x  (how fast i catches up):
        b_i > 0  ->  gamma <= a_i / b_i      (upper end)
        b_i < 0  ->  gamma >= a_i / b_i      (lower end)
        b_i == 0 ->  needs a_i > 0, or a_i == 0 and x winning the id tie-break.
    Returns (lows, highs) of the non-empty intervals, lows clamped at 0; highs may be +inf.
    """
    Dh = normalize_rows(D)
    g = normalize_rows(G)
    if negative_rule == "skip":
        g[np.einsum("ij,ij->i", Dh, G) < 0] = 0.0
    S = np.asarray(Qv, np.float64) @ Dh.T
    H = np.asarray(Qv, np.float64) @ g.T
    lows, highs = [], []
    for qi, rel in enumerate(val_rel_rows):
        for x in rel:
            a = S[qi, x] - S[qi]
            b = H[qi] - H[qi, x]
            others = np.ones(len(a), dtype=bool)
            others[x] = False
            up = others & (b > 0)
            down = others & (b < 0)
            flat = others & (b == 0)
            if np.any(a[flat] < 0) or np.any((a[flat] == 0) & (rank[flat] > rank[x])):
                continue
            low = max(0.0, float(np.max(a[down] / b[down]))) if down.any() else 0.0
            high = float(np.min(a[up] / b[up])) if up.any() else math.inf
            if high >= low:
                lows.append(low)
                highs.append(high)
    return np.array(lows), np.array(highs)


def sweep_most_covered(lows, highs):
    """nudge-ft's sweep: the smallest end point v maximising #{low <= v < high}
    (strictly positive); 0 when no interval is feasible."""
    events = sorted([(v, +1) for v in lows] + [(v, -1) for v in highs])
    best_v, best_count, count, j = 0.0, 0, 0, 0
    while j < len(events):
        v = events[j][0]
        while j < len(events) and events[j][0] == v:
            count += events[j][1]
            j += 1
        if count > best_count:
            best_v, best_count = v, count
    return float(best_v), best_count


def select_gamma_nudge_m_reference(D, G, Qv, val_query_ids, val_qrels, doc_ids,
                                   negative_rule="move"):
    """nudge-ft's NUDGE-M rule: exact top-1 intervals and a sweep. Returns (gamma, count)."""
    rank = tie_rank(doc_ids)
    doc_row = {d: i for i, d in enumerate(doc_ids)}
    rel_rows = _relevant_rows(val_query_ids, val_qrels, doc_row)
    lows, highs = nudge_m_intervals(D, G, Qv, rel_rows, rank, negative_rule)
    return sweep_most_covered(lows, highs)


# --------------------------------------------------------------------------- convenience

@dataclass
class Setup:
    ds: SciFact
    train: list
    val: list
    test: list
    G: np.ndarray


def paper_setup(directory, seed=0):
    ds = load_scifact(directory)
    train, val, test = paper_split(ds, seed)
    G = gradients(ds.doc_row, len(ds.doc_ids), ds.query_matrix(train), train, ds.qrels)
    return Setup(ds, train, val, test, G)


def default_data_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.normpath(os.path.join(here, "..", "..", "data", "scifact"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", nargs="?", default=default_data_dir())
    args = ap.parse_args(argv)

    t0 = time.time()
    st = paper_setup(args.data_dir)
    ds = st.ds
    print(f"data {args.data_dir}: {len(ds.doc_ids)} docs, split "
          f"{len(st.train)}/{len(st.val)}/{len(st.test)}, "
          f"{int((np.linalg.norm(st.G, axis=1) > 0).sum())} moving records")
    Qt, Qv = ds.query_matrix(st.test), ds.query_matrix(st.val)
    qt, qv = ds.qrels_for(st.test), ds.qrels_for(st.val)

    def report(name, D, gamma="-", distance="cosine"):
        m = evaluate_embeddings(D, ds.doc_ids, Qt, st.test, qt, 10, distance)
        print(f"  {name:<44} gamma {gamma:<10} test NDCG@10 {m['ndcg']:.4f}  "
              f"capped recall@10 {m['capped_recall']:.4f}  recall@10 {m['recall']:.4f}  "
              f"MRR@10 {m['mrr']:.4f}  ({distance})")
        return m

    report("no fine-tuning", ds.docs)
    gn, _ = select_gamma_nudge_n_reference(ds.docs, st.G, Qv, st.val, qv, ds.doc_ids)
    new_n, ch_n = nudge_n(ds.docs, st.G, gn)
    report("NUDGE-N (25-point grid, top-1)", new_n, f"{gn:.2f}")
    gm, cnt = select_gamma_nudge_m_reference(ds.docs, st.G, Qv, st.val, qv, ds.doc_ids)
    new_m, ch_m = nudge_m(ds.docs, st.G, gm)
    report("NUDGE-M (exact top-1 interval rule)", new_m, f"{gm:.6f}")
    report("NUDGE-M (exact top-1 interval rule)", new_m, f"{gm:.6f}", "inner_product")
    best = max(NUDGE_N_GRID, key=lambda g: (evaluate_embeddings(
        nudge_n(ds.docs, st.G, g)[0], ds.doc_ids, Qt, st.test, qt)["ndcg"], -g))
    report("NUDGE-N best grid gamma on test (bound)", nudge_n(ds.docs, st.G, best)[0],
           f"{best:.2f}")
    print(f"  records changed: NUDGE-N {int(ch_n.sum())}, NUDGE-M {int(ch_m.sum())}; "
          f"NUDGE-M intervals covering gamma: {cnt}; {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
