"""How should nudge_fit choose gamma and which labels should move the records? Every protocol
through nudge_fit itself, given the labelled queries as `queries`/`qrels` (no validation
tables), scored by nudge_evaluate (trec_eval's NDCG@10) on test queries it never saw:

  held-out        10% of the queries choose gamma, G from the other 90% (nudge 0.1's default)
  held-out, all   the same gamma, G from all the labelled queries (update_from => 'all')
  K folds         gamma by the mean out-of-fold NDCG@10 over K folds, G from all (folds => K)

for NUDGE-N and NUDGE-M, each with seeds 0, 1, 2 (the seed deals the split / the folds), on
SciFact (the paper's train + validation queries, 80%, as the labelled set; its test 20%) and on
synthetic corpora with planted relevant records (bench/data.py) with few and many labels.
Also, on SciFact, the paper's explicit 70% / 10% tables with update_from 'train' and 'all'.

    python bench/protocols.py [--quick]      # PGHOST/PGPORT/PGUSER: a server with the release build

Writes bench/out/protocols.json and prints a Markdown table (mean test NDCG@10 over the seeds,
min..max, mean fit seconds).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics

import data
from common import connect, ensure_db, log, machine, write_json

PROTOCOLS = [
    ("held-out", {}),
    ("held-out, all", {"update_from": "all"}),
    ("3 folds", {"folds": 3}),
    ("5 folds", {"folds": 5}),
    ("10 folds", {"folds": 10}),
]
METHODS = ["nudge_n", "nudge_m"]
SEEDS = [0, 1, 2]


def datasets(quick):
    sets = [("SciFact (5,183 docs, 886 labelled queries)", data.scifact(), "sf")]
    for n_lab in ([400] if quick else [200, 1000]):
        for seed in ([0] if quick else [0, 1, 2]):
            c = data.synth(20_000, n_train=n_lab - n_lab // 8, n_val=n_lab // 8, n_test=1000, seed=seed)
            name = f"syn{n_lab}s{seed}"
            sets.append((f"synthetic 20k docs, {n_lab} labelled queries, data seed {seed}",
                         dataclasses.replace(c, name=name), name))
    return sets


def prepare(c, name):
    for kind in ("queries", "qrels"):
        c.execute(f"CREATE OR REPLACE VIEW {name}_tv_{kind} AS SELECT * FROM {name}_train_{kind} "
                  f"UNION ALL SELECT * FROM {name}_val_{kind}")
    c.execute(f"ALTER TABLE {name}_docs ADD COLUMN IF NOT EXISTS nudged vector(384)")


def fit_and_score(c, name, queries, method, seed, kw):
    named = "".join(f", {k} => %({k})s" for k in kw)
    gamma, seconds = c.execute(
        f"SELECT gamma, seconds FROM nudge_fit('{name}_docs', 'embedding', '{queries}_queries', "
        f"'{queries}_qrels', target => 'nudged', method => %(method)s, seed => %(seed)s{named})",
        dict(method=method, seed=seed, **kw)).fetchone()
    ndcg = c.execute(f"SELECT ndcg FROM nudge_evaluate('{name}_docs', 'nudged', '{name}_test_queries', "
                     f"'{name}_test_qrels')").fetchone()[0]
    return {"gamma": gamma, "seconds": seconds, "ndcg": ndcg}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one small synthetic set, for a smoke run")
    args = ap.parse_args()
    ensure_db()
    results = []
    for title, corpus, name in datasets(args.quick):
        data.load(corpus, {"name": name, "n": len(corpus.doc_ids),
                           "queries": {r: len(s[0]) for r, s in corpus.sets.items()}})
        with connect() as c:
            prepare(c, name)
            base = c.execute(f"SELECT ndcg FROM nudge_evaluate('{name}_docs', 'embedding', "
                             f"'{name}_test_queries', '{name}_test_qrels')").fetchone()[0]
            runs = [(p, kw, f"{name}_tv") for p, kw in PROTOCOLS]
            if name == "sf":
                runs += [("paper 70/10 tables", {"validation_queries": "sf_val_queries",
                                                 "validation_qrels": "sf_val_qrels"}, "sf_train"),
                         ("paper 70/10 tables, all", {"validation_queries": "sf_val_queries",
                                                      "validation_qrels": "sf_val_qrels",
                                                      "update_from": "all"}, "sf_train")]
            for method in METHODS:
                for protocol, kw, queries in runs:
                    seeds = [0] if "validation_queries" in kw else SEEDS
                    for seed in seeds:
                        r = fit_and_score(c, name, queries, method, seed, kw)
                        r.update(dataset=title, method=method, protocol=protocol, seed=seed, baseline=base)
                        results.append(r)
                        log(f"{name} {method} {protocol} seed {seed}: gamma {r['gamma']:.3f} "
                            f"NDCG@10 {r['ndcg']:.4f} ({r['seconds']:.2f} s)")
    write_json("protocols", {"machine": machine(), "results": results})
    print(table(results))


def table(results):
    rows = ["| data set | method | no fit | " + " | ".join(p for p, _ in PROTOCOLS) + " |",
            "|---|---|---|" + "---|" * len(PROTOCOLS)]
    keys = []
    for r in results:
        if (r["dataset"], r["method"]) not in keys:
            keys.append((r["dataset"], r["method"]))
    for ds, m in keys:
        mine = [r for r in results if r["dataset"] == ds and r["method"] == m]
        cells = []
        for p, _ in PROTOCOLS:
            xs = [r for r in mine if r["protocol"] == p]
            v = [r["ndcg"] for r in xs]
            cells.append(f"{statistics.mean(v):.4f} ({min(v):.4f}..{max(v):.4f}; "
                         f"{statistics.mean(r['seconds'] for r in xs):.2f} s)")
        rows.append(f"| {ds} | {m} | {mine[0]['baseline']:.4f} | " + " | ".join(cells) + " |")
    extra = [r for r in results if r["protocol"].startswith("paper")]
    if extra:
        rows.append("")
        rows.append("| SciFact, the paper's tables | method | gamma | test NDCG@10 | fit s |")
        rows.append("|---|---|---|---|---|")
        for r in extra:
            rows.append(f"| {r['protocol']} | {r['method']} | {r['gamma']:.3f} | {r['ndcg']:.4f} | {r['seconds']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
