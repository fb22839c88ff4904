"""Citus benchmark: nudge_fit on one synthetic corpus (bench/data.py, as in bench.py's `scale`)
placed three ways in one Citus database, interleaved run by run:

  single   a plain table on the coordinator (Citus loaded, table not distributed)
  push     the same rows in a table distributed by id (32 shards on 2 workers), the corpus pass
           pushed down to the shards (the default)
  pull     that distributed table with SET nudge.citus_pushdown = off (the coordinator reads
           every row)

Per run, on a fresh connection (so that VmHWM is this fit's): nudge_fit wall time (applied and
committed; then nudge_revert + VACUUM, untimed), gamma and records_changed (asserted equal
across the three), bytes read by the coordinator backend (/proc/<pid>/io rchar around the
fit: socket reads from the workers and relation reads that missed shared buffers), the
pushed-down fit's own count of the shards' reply bytes (its DEBUG1 message), and the
backend's VmHWM. --dry-run adds the same three with dry_run => true. Tables (bench_syn_<n>_*)
are loaded once and kept; bench_meta says what they hold. Results: bench/out/citus.json
(sizes measured earlier are kept) and a markdown table per size on stdout.

    PGPORT=<coordinator port> python bench/citus.py --sizes 100000,1000000 [--reps 3] [--dry-run] [--max-load 1]

Needs root (reads /proc of the server's backend) and a cluster as scripts/citus.sh starts it
(database nudge_citus, user postgres, trust; the nudge build installed on all nodes). The
benchmark uses its own database, $NUDGE_BENCH_DB (default nudge_citus_bench), created on the
three nodes on first use.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("NUDGE_BENCH_DB", "nudge_citus_bench")
os.environ.setdefault("PGHOST", "127.0.0.1")
os.environ.setdefault("PGUSER", "postgres")
if "CITUS_COORD_PORT" in os.environ:
    os.environ.setdefault("PGPORT", os.environ["CITUS_COORD_PORT"])

import data  # noqa: E402
from common import (DIM, OUT, ROOT, backend_pid, connect, log, machine, meta_matches, proc_status,  # noqa: E402
                    set_meta, summary, wait_quiet, write_json)

QUIET = {"max_load": float("inf"), "timeout": 0}  # --max-load / --wait

VARIANTS = {"single": "single node (plain table)", "push": "Citus, pushdown", "pull": "Citus, coordinator pull"}
SHARDS = 32


def ensure_db():
    """The benchmark's own database on all three nodes (the tests drop and re-create the nudge
    extension in nudge_citus, which would take applied fits' backups with it): created on each
    node with citus, the coordinator and the workers (as nudge_citus lists them) registered,
    then vector + nudge created on the coordinator (Citus propagates them)."""
    import psycopg
    db = os.environ["NUDGE_BENCH_DB"]
    with psycopg.connect(dbname=os.environ.get("CITUS_DB", "nudge_citus"), autocommit=True) as c:
        workers = c.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE shouldhaveshards ORDER BY nodeid").fetchall()
    coord = (os.environ["PGHOST"], int(os.environ["PGPORT"]))
    for host, port in [coord] + workers:
        with psycopg.connect(host=host, port=port, dbname="postgres", autocommit=True) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                c.execute(f'CREATE DATABASE "{db}"')
        with psycopg.connect(host=host, port=port, dbname=db, autocommit=True) as c:
            c.execute("SET client_min_messages = warning")
            c.execute("CREATE EXTENSION IF NOT EXISTS citus")
    with connect() as c:
        c.execute("SELECT citus_set_coordinator_host(%s, %s)", coord)
        for w in workers:
            c.execute("SELECT citus_add_node(%s, %s)", w)  # idempotent
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        # a fresh catalog for the installed build (as bench.py); an interrupted run may have
        # left a fit applied: put its vectors back first
        if c.execute("SELECT 1 FROM pg_extension WHERE extname = 'nudge'").fetchone():
            for (fid,) in c.execute("SELECT fit_id FROM nudge.fits WHERE status = 'applied' ORDER BY fit_id DESC").fetchall():
                log(f"reverting fit {fid} left applied")
                c.execute("SELECT nudge_revert(%s)", (fid,))
        c.execute("SET client_min_messages = warning")
        c.execute("DROP EXTENSION IF EXISTS nudge CASCADE")
        c.execute("CREATE EXTENSION nudge")


def names(n):
    base = f"bench_syn_{data.tag(n)}"  # data.load's table prefix
    return base, {"single": f"{base}_docs", "push": f"{base}_dist", "pull": f"{base}_dist"}


def prepare(n):
    """Load the local corpus + queries with data.load (bench_meta marker) and copy the corpus
    into a table distributed by id; both skipped when bench_meta says they are current."""
    base, tables = names(n)
    params = data.synth_params(n)
    dist_params = dict(params, shards=SHARDS)
    with connect() as c:
        c.execute("CREATE TABLE IF NOT EXISTS bench_meta (name text PRIMARY KEY, params jsonb)")
        fresh = meta_matches(c, base, params) and meta_matches(c, tables["push"], dist_params)
    if fresh:
        log(f"{base}: tables up to date")
        return
    corpus = data.synth(n)
    corpus.name = base
    data.load(corpus, params)  # plain tables on the coordinator (Citus does not touch them)
    dist = tables["push"]
    with connect() as c:
        log(f"{dist}: distributing")
        c.execute(f"DROP TABLE IF EXISTS {dist}")
        c.execute(f"CREATE TABLE {dist} (id bigint PRIMARY KEY, embedding vector({DIM}))")
        c.execute(f"SELECT create_distributed_table('{dist}', 'id', shard_count => {SHARDS})")
        c.execute(f"INSERT INTO {dist} SELECT id, embedding FROM {tables['single']}")
        c.execute(f"VACUUM ANALYZE {dist}")
        set_meta(c, dist, dist_params)
        log(f"{dist}: loaded")


def fit_sql(base, table, dry_run):
    return (f"SELECT fit_id, gamma, records_changed, validation_before, validation_after, seconds "
            f"FROM nudge_fit('{table}', 'embedding', '{base}_train_queries', '{base}_train_qrels', "
            f"validation_queries => '{base}_val_queries', validation_qrels => '{base}_val_qrels', "
            f"dry_run => {'true' if dry_run else 'false'})")


def rchar(pid):
    with open(f"/proc/{pid}/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def run_once(n, variant, dry_run):
    base, tables = names(n)
    table = tables[variant]
    with connect() as c:
        pid = backend_pid(c)
        notices = []
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("LOAD 'nudge'")  # untimed, as in bench.py
        if variant == "pull":
            c.execute("SET nudge.citus_pushdown = off")
        c.execute("SET client_min_messages = debug1")  # same in all three (cheap: a few messages)
        load, waited = wait_quiet(QUIET["max_load"], QUIET["timeout"])  # other work on the machine shows here
        r0 = rchar(pid)
        t0 = time.perf_counter()
        row = c.execute(fit_sql(base, table, dry_run)).fetchone()
        secs = time.perf_counter() - t0
        read = rchar(pid) - r0
        c.execute("RESET client_min_messages")
        hwm = proc_status(pid)["VmHWM"]
        fid, gamma, changed, vb, va, inner = row
        if not dry_run:  # untimed restore
            c.execute("SELECT nudge_revert(%s)", (fid,))
            c.execute(f"VACUUM {table}")
    # "nudge_fit: 32 shards of T answered N bytes" (one call per shard) or "nudge_fit: 2 workers
    # answered N bytes for the shards of T" (one call per worker, later builds)
    answered = [m for m in notices if m.startswith("nudge_fit: ") and " answered " in m and table in m]
    reply = int(re.search(r"answered (\d+) bytes", answered[0]).group(1)) if answered else None
    if variant == "push":
        assert answered, f"no pushdown: {notices[-5:]}"
    else:
        assert not answered, f"{variant}: unexpected pushdown: {answered}"
    return {"seconds": secs, "loadavg_before": load, "waited_s": waited, "debug": answered[0] if answered else None, "in_function_seconds": inner, "gamma": gamma, "records_changed": changed,
            "validation_before": vb, "validation_after": va, "rchar": read, "shard_reply_bytes": reply,
            "vmhwm": hwm}


def check_placement(n):
    _, tables = names(n)
    with connect() as c:
        assert not c.execute("SELECT 1 FROM pg_dist_partition WHERE logicalrelid = %s::regclass",
                             (tables["single"],)).fetchone(), "the single-node table is a Citus table"
        shards, nodes = c.execute("SELECT count(*), count(DISTINCT nodeport) FROM citus_shards WHERE table_name = "
                                  "%s::regclass", (tables["push"],)).fetchone()
        assert (shards, nodes) == (SHARDS, 2), (shards, nodes)


def measure(n, reps, dry_run):
    check_placement(n)
    runs = {v: [] for v in VARIANTS}
    for i in range(reps):  # interleaved: single, push, pull, single, ...
        for v in VARIANTS:
            r = run_once(n, v, dry_run)
            runs[v].append(r)
            log(f"{n} {'dry' if dry_run else 'applied'} rep {i + 1} {v}: {r['seconds']:.2f} s, gamma {r['gamma']:.6g}, "
                f"changed {r['records_changed']}, rchar {r['rchar'] / 2**20:.1f} MiB, VmHWM {r['vmhwm'] / 2**20:.0f} MiB")
    ref = runs["single"][0]
    for v, rs in runs.items():
        for r in rs:
            assert r["records_changed"] == ref["records_changed"], (v, r, ref)
            for k in ("gamma", "validation_before", "validation_after"):
                assert abs(r[k] - ref[k]) <= 1e-12, (v, k, r[k], ref[k])
    out = {}
    for v, rs in runs.items():
        out[v] = {"time": summary([r["seconds"] for r in rs]),
                  "in_function_seconds": summary([r["in_function_seconds"] for r in rs]),
                  "gamma": rs[-1]["gamma"], "records_changed": rs[-1]["records_changed"],
                  "validation_before": rs[-1]["validation_before"], "validation_after": rs[-1]["validation_after"],
                  "rchar": summary([r["rchar"] for r in rs]),
                  "shard_reply_bytes": [r["shard_reply_bytes"] for r in rs], "debug": rs[-1]["debug"],
                  "vmhwm": summary([r["vmhwm"] for r in rs]),
                  "loadavg_before": [round(r["loadavg_before"], 2) for r in rs]}
    return out


def table_md(n, res, corpus_bytes):
    lines = [f"| {n:,} x {DIM} | fit s (median) | runs | gamma | records changed | bytes to coordinator (rchar) "
             f"| % of corpus | shard replies (DEBUG) | coordinator VmHWM MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v, label in VARIANTS.items():
        r = res[v]
        rc = r["rchar"]["median"]
        rep = r["shard_reply_bytes"][-1]
        lines.append(f"| {label} | {r['time']['median']:.2f} | {', '.join(f'{t:.2f}' for t in r['time']['runs'])} "
                     f"| {r['gamma']:.6g} | {r['records_changed']:,} | {rc / 1e6:,.1f} MB | {100 * rc / corpus_bytes:.2f}% "
                     f"| {'-' if rep is None else f'{rep / 1e6:,.2f} MB'} | {r['vmhwm']['median'] / 2**20:.0f} |")
    return "\n".join(lines)


def environment():
    with connect() as c:
        pkglib = c.execute("SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'").fetchone()[0]
        env = {"citus": c.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'").fetchone()[0],
               "server": c.execute("SHOW server_version").fetchone()[0],
               "shared_buffers": c.execute("SHOW shared_buffers").fetchone()[0],
               "workers": c.execute("SELECT count(*) FROM pg_dist_node WHERE shouldhaveshards").fetchone()[0]}
    env["nudge_so_sha256"] = hashlib.sha256(open(os.path.join(pkglib, "nudge.so"), "rb").read()).hexdigest()
    env["bench_commit"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                         text=True).stdout.strip()
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true", help="also measure dry_run => true (after the applied fits)")
    ap.add_argument("--max-load", type=float, default=float("inf"),
                    help="start each fit only when the 1-minute load average is below this (waits)")
    ap.add_argument("--wait", type=int, default=1800, help="longest wait for --max-load, seconds")
    a = ap.parse_args()
    QUIET.update(max_load=a.max_load, timeout=a.wait)
    prev = OUT / "citus.json"
    res = json.loads(prev.read_text()) if prev.exists() else {}
    ensure_db()
    res.update({"machine": machine(), "reps": a.reps, "env": environment()})
    res.setdefault("sizes", {})
    for n in [int(x) for x in a.sizes.split(",") if x]:
        prepare(n)
        corpus_bytes = n * DIM * 4
        r = {"n": n, "corpus_bytes": corpus_bytes, "measured_at": time.strftime("%Y-%m-%d %H:%M"),
             "env": res["env"], "applied": measure(n, a.reps, False)}
        if a.dry_run:
            r["dry_run"] = measure(n, a.reps, True)
        res["sizes"][str(n)] = r
        write_json("citus", res)
        for kind in ("applied", "dry_run"):
            if kind in r:
                print(f"\n{kind} (corpus {corpus_bytes / 1e6:,.1f} MB = rows x {DIM} x 4):\n")
                print(table_md(n, r[kind], corpus_bytes), flush=True)


if __name__ == "__main__":
    sys.exit(main())
