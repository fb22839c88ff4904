"""Partitioned vs unpartitioned nudge_fit of the same table: 100k rows of 384 dimensions in
100 partitions (1,000 rows each), 2,000 labelled queries (20 per partition, each near one
row of its partition), every argument at its default (10 folds), dry runs, interleaved run by
run; prints the fit's own `seconds`, the client's wall time and the 1-minute load average
before each run. Usage: python bench/partition.py [--reps 3] [--rows 100000] [--parts 100] [--max-load 1]
(libpq variables name the server; the database is (re)created as nudge_bench_partition)."""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import psycopg


def vec_text(row):
    return "[" + ",".join("%.7g" % v for v in row) + "]"


def load(conn, rows, parts, per_part, dim, seed=0):
    rng = np.random.default_rng(seed)
    docs = rng.standard_normal((rows, dim), dtype=np.float32)
    tenant = np.arange(rows) % parts
    conn.execute(f"CREATE TABLE docs (id int PRIMARY KEY, tenant int, embedding vector({dim}))")
    with conn.cursor() as cur, cur.copy("COPY docs (id, tenant, embedding) FROM STDIN") as cp:
        for i in range(rows):
            cp.write_row((i, int(tenant[i]), vec_text(docs[i])))
    nq = parts * per_part
    conn.execute(f"CREATE TABLE q (id int PRIMARY KEY, tenant int, embedding vector({dim}))")
    conn.execute("CREATE TABLE qrels (query_id int, doc_id int, score int)")
    with conn.cursor() as cur:
        with cur.copy("COPY q (id, tenant, embedding) FROM STDIN") as cp:
            for k in range(nq):
                t = k % parts
                d = int(rng.integers(rows // parts)) * parts + t   # a row of tenant t
                v = docs[d] + 4.0 * rng.standard_normal(dim, dtype=np.float32)
                cp.write_row((k, t, vec_text(v)))
                qrels_rows.append((k, d))
        with cur.copy("COPY qrels (query_id, doc_id, score) FROM STDIN") as cp:
            for k, d in qrels_rows:
                cp.write_row((k, d, 1))
    conn.execute("ANALYZE")


qrels_rows: list = []


def run(conn, partition, max_load):
    arg = ", partition => 'tenant'" if partition else ""
    t_wait = time.time()
    while os.getloadavg()[0] >= max_load and time.time() - t_wait < 900:  # a quiet machine
        time.sleep(10)
    load1 = os.getloadavg()[0]
    t0 = time.perf_counter()
    secs, gamma, before, after = conn.execute(
        f"SELECT seconds, gamma, validation_before, validation_after FROM nudge_fit('docs', 'embedding', 'q', 'qrels', "
        f"dry_run => true{arg})").fetchone()
    wall = time.perf_counter() - t0
    return dict(partitioned=partition, seconds=secs, wall=wall, load1=load1, gamma=gamma, before=before, after=after)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--parts", type=int, default=100)
    ap.add_argument("--per-part", type=int, default=20)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--max-load", type=float, default=float("inf"),
                    help="start each fit only when the 1-minute load average is below this (waits up to 15 min)")
    a = ap.parse_args()
    with psycopg.connect(dbname="postgres", autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS nudge_bench_partition WITH (FORCE)")
        admin.execute("CREATE DATABASE nudge_bench_partition")
    with psycopg.connect(dbname="nudge_bench_partition", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
        conn.execute("CREATE EXTENSION nudge")
        conn.execute("SET nudge.progress = off")
        t0 = time.perf_counter()
        load(conn, a.rows, a.parts, a.per_part, a.dim)
        print(f"loaded {a.rows} rows x {a.dim} in {a.parts} partitions, {a.parts * a.per_part} queries "
              f"in {time.perf_counter() - t0:.1f} s")
        conn.execute("LOAD 'nudge'")
        results = []
        for rep in range(a.reps):
            for partition in (False, True):
                r = run(conn, partition, a.max_load)
                results.append(r)
                print(f"rep {rep}: {'partitioned  ' if partition else 'unpartitioned'} fit {r['seconds']:.2f} s "
                      f"(wall {r['wall']:.2f} s, load1 {r['load1']:.2f}), gamma {r['gamma']:.3f}, "
                      f"validation {r['before']:.4f} -> {r['after']:.4f}")
        med = {p: statistics.median(r["seconds"] for r in results if r["partitioned"] == p) for p in (False, True)}
        print(f"median: unpartitioned {med[False]:.2f} s, partitioned {med[True]:.2f} s, "
              f"ratio partitioned / unpartitioned {med[True] / med[False]:.3f}")


if __name__ == "__main__":
    main()
