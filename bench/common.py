"""Shared helpers of the benchmark harness: connections, timing, memory, data loading.

Runs in the bench-only venv (bench/setup.sh); the server is the one PGHOST/PGPORT/PGUSER
point at (bench/run.sh starts a private one).
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import struct
import sys
import time

import numpy as np
import psycopg

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT / "tests" / "reference"))

import nudge_ref as R  # noqa: E402  (the numpy reference: SciFact loader, split, metrics)

DB = os.environ.get("NUDGE_BENCH_DB", "nudge_bench")
DIM = 384


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- database

def ensure_db():
    with psycopg.connect(dbname="postgres", autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB,)).fetchone():
            c.execute(f'CREATE DATABASE "{DB}"')
    with connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute("CREATE TABLE IF NOT EXISTS bench_meta (name text PRIMARY KEY, params jsonb)")
        # Fresh catalog for every run (the installed build may define it differently). If a
        # fit was left applied (an interrupted run), the tables hold nudged vectors whose
        # backups are about to go: forget them so that they are loaded again.
        if c.execute("SELECT 1 FROM pg_extension WHERE extname = 'nudge'").fetchone():
            try:
                left = c.execute("SELECT count(*) FROM nudge.fits WHERE status = 'applied'").fetchone()[0]
            except psycopg.Error:
                left = 1
            if left:
                log(f"{left} applied fit(s) left behind: the benchmark tables will be reloaded")
                c.execute("DELETE FROM bench_meta")
        c.execute("DROP EXTENSION IF EXISTS nudge CASCADE")
        c.execute("CREATE EXTENSION nudge")
        c.execute("CREATE TABLE IF NOT EXISTS bench_meta (name text PRIMARY KEY, params jsonb)")


def connect(**kw):
    kw.setdefault("autocommit", True)
    c = psycopg.connect(dbname=DB, **kw)
    c.execute("SET nudge.progress = off")
    return c


def backend_pid(conn):
    return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def proc_status(pid):
    """VmHWM / VmRSS / RssAnon / RssShmem of a process, in bytes (needs to be root or the owner)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssShmem", "RssFile"):
                out[k] = int(v.split()[0]) * 1024
    return out


def meta_matches(conn, name, params):
    row = conn.execute("SELECT params FROM bench_meta WHERE name = %s", (name,)).fetchone()
    return row is not None and row[0] == params


def set_meta(conn, name, params):
    conn.execute("INSERT INTO bench_meta VALUES (%s, %s) ON CONFLICT (name) DO UPDATE SET params = EXCLUDED.params",
                 (name, json.dumps(params)))


# --------------------------------------------------------------------------- timing

def wait_quiet(max_load, timeout):
    """Wait (checking every 10 s, at most `timeout` s) until the 1-minute load average is
    below `max_load`; returns (load average, seconds waited)."""
    t0 = time.time()
    while os.getloadavg()[0] >= max_load and time.time() - t0 < timeout:
        time.sleep(10)
    return os.getloadavg()[0], round(time.time() - t0)


def median(xs):
    return float(statistics.median(xs))


def timeit(fn, reps, setup=None, teardown=None):
    """Run fn() reps times; returns (seconds list, last result). setup/teardown are untimed."""
    times, res = [], None
    for _ in range(reps):
        if setup:
            setup()
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        if teardown:
            teardown(res)
    return times, res


def summary(times):
    return {"median": median(times), "min": min(times), "max": max(times), "runs": [round(t, 4) for t in times]}


# --------------------------------------------------------------------------- loading

PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
PGCOPY_TRAILER = struct.pack(">h", -1)


def copy_vectors(conn, table, ids, vectors, id_type="bigint", batch=50_000):
    """COPY (id, embedding) in binary format: pgvector's binary form is int16 dim, int16 0,
    then float4 big-endian; ids are int8."""
    assert id_type == "bigint"
    n, dim = vectors.shape
    dt = np.dtype([("nf", ">i2"), ("l1", ">i4"), ("id", ">i8"), ("l2", ">i4"),
                   ("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (dim,))])
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, embedding) FROM STDIN (FORMAT BINARY)") as cp:
            cp.write(PGCOPY_HEADER)
            for s in range(0, n, batch):
                e = min(n, s + batch)
                rec = np.empty(e - s, dtype=dt)
                rec["nf"] = 2
                rec["l1"] = 8
                rec["id"] = ids[s:e]
                rec["l2"] = 4 + 4 * dim
                rec["dim"] = dim
                rec["unused"] = 0
                rec["v"] = vectors[s:e]
                cp.write(rec.tobytes())
            cp.write(PGCOPY_TRAILER)


def vec_text(row):
    return "[" + ",".join("%.9g" % v for v in row.tolist()) + "]"


def copy_text_vectors(conn, table, ids, vectors):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (id, embedding) FROM STDIN") as cp:
            for i, row in zip(ids, vectors):
                cp.write_row((i, vec_text(row)))


def copy_qrels(conn, table, rows):
    with conn.cursor() as cur:
        with cur.copy(f"COPY {table} (query_id, doc_id, score) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)


def write_json(name, obj):
    OUT.mkdir(parents=True, exist_ok=True)
    p = OUT / f"{name}.json"
    p.write_text(json.dumps(obj, indent=1, default=float))
    log("wrote", p)
    return p


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem = int(line.split()[1]) * 1024
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem / 2**30, 1)}


def gemm_rate(reps=5, m=1000, n=200_000, k=DIM):
    """Measured f32 GEMM rate (numpy/OpenBLAS, all cores) on a validation-by-corpus shaped
    product: GFLOP/s of the FASTEST of `reps` runs (the limit it feeds is a lower bound, so
    the peak rate makes it the strictest), and the run times."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((n, k), dtype=np.float32)
    a @ b[:1000].T  # warm up
    times, _ = timeit(lambda: a @ b.T, reps)
    return 2.0 * m * n * k / min(times) / 1e9, times
