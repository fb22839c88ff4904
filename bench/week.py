"""A week of nightly guarded refits on SciFact (docs/tutorial.md, "Refit every night").

Labels arrive day by day (the training queries of the paper's split, in seven batches);
day 1 fits, days 2-7 run the nightly job, `nudge_refit(first_fit, guard_queries =>,
guard_qrels =>)`. The guard is a fixed slice of the test queries (the first half, by id); the
other half is never used by any fit or guard and shows what the users of the other queries
see. On day 5 a deploy breaks the labels view (every click now names the document loaded
after the clicked one); on day 6 it is fixed. Prints one line per day and, with --json,
writes them.

Run against a server with nudge (release build) and pgvector installed, e.g. the demo's:
    scripts/demo.sh && PGHOST=127.0.0.1 PGPORT=<port> PGUSER=postgres \
        /opt/nudge/venv/bin/python bench/week.py
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np
import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "reference"))
import nudge_ref as R  # noqa: E402

DAYS = 7
LABELS = """CREATE OR REPLACE VIEW labels AS SELECT query_id, doc_id, 1 AS score FROM clicks
             WHERE day <= (SELECT day FROM today)"""
BROKEN = """CREATE OR REPLACE VIEW labels AS SELECT c.query_id, n.next_id AS doc_id, 1 AS score
              FROM clicks c JOIN next_doc n ON n.id = c.doc_id WHERE c.day <= (SELECT day FROM today)"""


def vec(v):
    return "[" + ",".join(f"{x:.9g}" for x in v) + "]"


def load(c, ds, train, guard, held_out):
    c.execute("DROP TABLE IF EXISTS docs, queries, clicks, monitor_queries, monitor_qrels, "
              "other_queries, other_qrels CASCADE")
    c.execute("CREATE TABLE docs (id text PRIMARY KEY, embedding vector(384))")
    with c.cursor().copy("COPY docs (id, embedding) FROM STDIN") as cp:
        for d, v in zip(ds.doc_ids, ds.docs):
            cp.write_row((d, vec(v)))
    for table, ids in (("queries", train), ("monitor_queries", guard), ("other_queries", held_out)):
        c.execute(f"CREATE TABLE {table} (id text PRIMARY KEY, embedding vector(384))")
        with c.cursor().copy(f"COPY {table} (id, embedding) FROM STDIN") as cp:
            for q, v in zip(ids, ds.query_matrix(ids)):
                cp.write_row((q, vec(v)))
    for table, ids in (("monitor_qrels", guard), ("other_qrels", held_out)):
        c.execute(f"CREATE TABLE {table} (query_id text, doc_id text, score int)")
        with c.cursor().copy(f"COPY {table} FROM STDIN") as cp:
            for q in ids:
                for d, s in ds.qrels[q].items():
                    if s > 0:
                        cp.write_row((q, d, s))
    # the click log: day of arrival
    c.execute("CREATE TABLE clicks (query_id text, doc_id text, day int)")
    with c.cursor().copy("COPY clicks FROM STDIN") as cp:
        for day, q in zip(np.array_split(np.arange(len(train)), DAYS), range(DAYS)):
            for i in day:
                for d, s in ds.qrels[train[i]].items():
                    if s > 0:
                        cp.write_row((train[i], d, q + 1))
    # load order, for day 5's broken view
    c.execute("CREATE TABLE next_doc (id text PRIMARY KEY, next_id text)")
    with c.cursor().copy("COPY next_doc FROM STDIN") as cp:
        for d, n in zip(ds.doc_ids, ds.doc_ids[1:] + ds.doc_ids[:1]):
            cp.write_row((d, n))
    c.execute("CREATE TABLE today (day int)")
    c.execute("INSERT INTO today VALUES (1)")
    # the labels view the fit reads: every click up to today
    c.execute(LABELS)
    c.execute("VACUUM ANALYZE")


def ndcg(c, queries, qrels):
    return c.execute("SELECT ndcg FROM nudge_evaluate('docs', 'embedding', %s, %s)", (queries, qrels)).fetchone()[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--db", default="nudge_week")
    p.add_argument("--data", default=str(ROOT / "data" / "scifact"))
    p.add_argument("--tolerance", type=float, default=0.0)
    p.add_argument("--json", help="write the days to this file")
    a = p.parse_args(argv)

    ds = R.load_scifact(a.data)
    train, val, test = R.paper_split(ds, 0)
    train = train + val          # every labelled non-test query arrives as clicks
    test = sorted(test)
    guard, held_out = test[: len(test) // 2], test[len(test) // 2:]

    with psycopg.connect(dbname="postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{a.db}"')
        c.execute(f'CREATE DATABASE "{a.db}"')
    with psycopg.connect(dbname=a.db, autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
        c.execute("CREATE EXTENSION nudge")
        c.execute("SET nudge.progress = off")
        load(c, ds, train, guard, held_out)
        load_avg = os.getloadavg()
        days = []
        start = {"guard": ndcg(c, "monitor_queries", "monitor_qrels"),
                 "other": ndcg(c, "other_queries", "other_qrels")}
        print(f"day 0: no fit               guard ndcg@10 {start['guard']:.4f}   other test queries {start['other']:.4f}")
        first = None
        for day in range(1, DAYS + 1):
            c.execute("UPDATE today SET day = %s", (day,))
            if day in (5, 6):
                c.execute(BROKEN if day == 5 else LABELS)   # broken by a deploy, then fixed
            labels = c.execute("SELECT count(*) FROM labels").fetchone()[0]
            t0 = time.time()
            if first is None:
                row = c.execute("""SELECT fit_id, 'applied', NULL::float8, NULL::float8, records_changed
                                     FROM nudge_fit('docs', 'embedding', 'queries', 'labels')""").fetchone()
                first = row[0]
            else:
                row = c.execute("""SELECT fit_id, status, guard_before, guard_after, records_changed
                                     FROM nudge_refit(%s, guard_queries => 'monitor_queries',
                                                      guard_qrels => 'monitor_qrels', guard_tolerance => %s)""",
                                (first, a.tolerance)).fetchone()
            secs = time.time() - t0
            fit_id, status, before, after, changed = row
            g, o = ndcg(c, "monitor_queries", "monitor_qrels"), ndcg(c, "other_queries", "other_qrels")
            if before is not None:
                assert abs(g - (after if status == "applied" else before)) < 1e-12, (g, before, after, status)
            days.append({"day": day, "labels": labels, "fit_id": fit_id, "status": status,
                         "guard_before": before, "guard_candidate": after, "guard_ndcg": g,
                         "other_test_ndcg": o, "records_changed": changed, "seconds": round(secs, 2)})
            cand = "" if after is None else f" (candidate {after:.4f})"
            print(f"day {day}: {labels:4d} labels{' (broken view)' if day == 5 else ''}  {status:8s} guard ndcg@10 "
                  f"{g:.4f}{cand}   other test queries {o:.4f}   {secs:.1f} s")
        prev = days[0]["guard_ndcg"]
        for d in days[1:]:
            assert d["guard_ndcg"] >= prev - a.tolerance - 1e-12, d
            prev = d["guard_ndcg"]
        print(f"load average before: {load_avg[0]:.2f}; the guard metric never dropped by more than "
              f"{a.tolerance} from one day to the next; day 7 {days[-1]['guard_ndcg']:.4f} vs day 1 {days[0]['guard_ndcg']:.4f}")
        if a.json:
            pathlib.Path(a.json).write_text(json.dumps({"tolerance": a.tolerance, "start": start, "days": days,
                                                        "loadavg": load_avg}, indent=1))


if __name__ == "__main__":
    main()
