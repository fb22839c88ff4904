"""Per-worker cost of the pushed-down corpus pass, as a function of the worker's share of the rows.

The same synthetic corpus (bench/data.py, as bench/citus.py loads it) in two distributed tables
of 32 shards: `two` spread over both workers (each holds about half the rows), `one` with every
shard on the first worker. A dry-run nudge_fit (the pass, no write) of each, interleaved run by
run, each run started only when the 1-minute load average is below --max-load (waits; recorded).
Each worker's time inside nudge_shard_pass is read from its own pg_stat_user_functions
(track_functions = 'all' for the benchmark database on the workers; the coordinator's session
keeps no cached worker connections, so every worker backend exits, and flushes its statistics,
when the fit's transaction ends). The workers run their pass on one thread each
(nudge.threads = 1 on the workers): two workers then use the machine's two cores without taking
each other's, and a worker's time measures its own work, as on a machine of its own.

If the pass costs the same per row wherever it runs, the `one` worker's time is twice a `two`
worker's (its share is 1.0 against 0.5), and on W machines each worker's pass takes 1/W of the
whole: docs/scaling.md cites the result.

    PGPORT=<coordinator port> python bench/citus_workers.py --size 1000000 --reps 3

Needs a cluster as scripts/citus.sh starts it and the bench venv (bench/setup.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("NUDGE_BENCH_DB", "nudge_citus_bench")
os.environ.setdefault("PGHOST", "127.0.0.1")
os.environ.setdefault("PGUSER", "postgres")
if "CITUS_COORD_PORT" in os.environ:
    os.environ.setdefault("PGPORT", os.environ["CITUS_COORD_PORT"])

import citus as cb  # noqa: E402  (bench/citus.py: the database, the tables)
from common import connect, log, machine, meta_matches, set_meta, wait_quiet, write_json  # noqa: E402


def workers():
    with connect() as c:
        return c.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE shouldhaveshards "
                         "AND noderole = 'primary' AND groupid <> 0 ORDER BY nodeid").fetchall()


def on_worker(w, sql, args=()):
    import psycopg
    with psycopg.connect(host=w[0], port=w[1], dbname=os.environ["NUDGE_BENCH_DB"], autocommit=True) as c:
        cur = c.execute(sql, args)
        return cur.fetchall() if cur.description else []


def prepare_one(n, first_worker, other_workers):
    """`<base>_one`: the corpus again, every shard on the first worker."""
    base, tables = cb.names(n)
    one = f"{base}_one"
    params = dict(cb.data.synth_params(n), shards=cb.SHARDS, on=list(first_worker))
    with connect() as c:
        if meta_matches(c, one, params):
            return one
        log(f"{one}: distributing onto {first_worker[0]}:{first_worker[1]} only")
        c.execute(f"DROP TABLE IF EXISTS {one}")
        c.execute(f"CREATE TABLE {one} (id bigint PRIMARY KEY, embedding vector({cb.DIM}))")
        for w in other_workers:
            c.execute("SELECT citus_set_node_property(%s, %s, 'shouldhaveshards', false)", w)
        try:
            c.execute(f"SELECT create_distributed_table('{one}', 'id', shard_count => {cb.SHARDS}, colocate_with => 'none')")
        finally:
            for w in other_workers:
                c.execute("SELECT citus_set_node_property(%s, %s, 'shouldhaveshards', true)", w)
        c.execute(f"INSERT INTO {one} SELECT id, embedding FROM {tables['single']}")
        c.execute(f"VACUUM ANALYZE {one}")
        set_meta(c, one, params)
    return one


def rows_per_worker(table):
    with connect() as c:
        return {int(port): int(rows) for port, rows in c.execute(
            "SELECT s.nodeport, sum(r.result::bigint) FROM run_command_on_shards(%s, 'SELECT count(*) FROM %%s') AS r "
            "JOIN citus_shards AS s ON s.shardid = r.shardid GROUP BY s.nodeport", (table,)).fetchall()}


def pass_ms(ws):
    out = {}
    for w in ws:
        r = on_worker(w, "SELECT coalesce(sum(total_time), 0) FROM pg_stat_user_functions WHERE funcname = 'nudge_shard_pass'")
        out[w[1]] = float(r[0][0])
    return out


def run(n, table, ws):
    base, _ = cb.names(n)
    before = pass_ms(ws)
    with connect() as c:
        c.execute("SET citus.max_cached_conns_per_worker = 0")
        t0 = time.time()
        row = c.execute(cb.fit_sql(base, table, True)).fetchone()
        wall = time.time() - t0
    time.sleep(1.5)  # worker backends exit and flush their statistics
    after = pass_ms(ws)
    return {"wall_s": round(wall, 3), "gamma": row[1], "records_changed": row[2],
            "worker_pass_ms": {str(p): round(after[p] - before[p], 1) for p in after}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=1.0)
    ap.add_argument("--wait", type=int, default=1800, help="longest wait for a quiet machine, seconds")
    a = ap.parse_args()
    cb.ensure_db()
    cb.prepare(a.size)
    ws = workers()
    # (Citus refuses ALTER DATABASE on a worker: the two settings go to the worker servers for
    # the run, and are reset after it)
    for w in ws:
        on_worker(w, "ALTER SYSTEM SET track_functions = 'all'")
        on_worker(w, "ALTER SYSTEM SET nudge.threads = 1")
        on_worker(w, "SELECT pg_reload_conf()")
    try:
        measure(a, ws)
    finally:
        for w in ws:
            on_worker(w, "ALTER SYSTEM RESET track_functions")
            on_worker(w, "ALTER SYSTEM RESET nudge.threads")
            on_worker(w, "SELECT pg_reload_conf()")


def measure(a, ws):
    base, tables = cb.names(a.size)
    layouts = {"two": tables["push"], "one": prepare_one(a.size, ws[0], ws[1:])}
    shares = {k: rows_per_worker(t) for k, t in layouts.items()}
    res = {"machine": machine(), "size": a.size, "layouts": layouts, "rows_per_worker": shares, "runs": []}
    for rep in range(a.reps):
        for name, table in layouts.items():
            load, waited = wait_quiet(a.max_load, a.wait)
            r = dict(run(a.size, table, ws), layout=name, rep=rep, loadavg_before=round(load, 2), waited_s=waited)
            log(f"{name} rep {rep}: {r}")
            res["runs"].append(r)
    g = {(r["gamma"], r["records_changed"]) for r in res["runs"]}
    assert len(g) == 1, f"layouts disagree: {g}"
    write_json("citus_workers", res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    sys.exit(main())
