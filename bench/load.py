"""Load test of online fits (issue 12): an application keeps reading and writing a corpus with
a pgvector HNSW index before, during and after a nudge_fit, in strict mode (lock => 'table'),
online mode (lock => 'rows') and staged mode (staged => true, then CALL nudge_apply: the write
in batches of 256 rows, each committed on its own), in one run, on the same table.

The application: READERS connections doing k-NN reads (`ORDER BY embedding <=> $1 LIMIT 10`,
through the HNSW index) and WRITERS connections doing INSERTs of new rows and UPDATEs of the
embedding of random existing rows, each connection at a fixed rate, all with
lock_timeout = '100ms'. Every statement's latency and outcome is recorded with the phase it
started in (before the fit, during it, after it). After each mode's fit the application stops
and the fit is reverted (unloaded), so both modes start from the same vectors; at the end
every application write that succeeded must be in the table (the last value written to each
id), and nothing else may have changed.

    bench/load.py --n 100000 [--phase-seconds 15] [--readers 4] [--writers 2]

Not a CI test: numbers depend on the machine (the results go to bench/out/load.json and, by
hand, to BENCHMARKS.md). Runs in any venv with numpy + psycopg against the server PGHOST/PGPORT
point at (a private copy with the release build installed; see bench/README.md).
"""
from __future__ import annotations

import argparse
import random
import threading
import time

import numpy as np
import psycopg

import data
from common import DIM, connect, ensure_db, log, machine, vec_text, write_json

INSERT_BASE = 10**9  # ids of rows the application inserts


def fit_sql(name, mode):
    """The fit of a mode: 'table', 'rows' or 'staged' (lock => 'rows', staged => true)."""
    lock, staged = ("rows", True) if mode == "staged" else (mode, False)
    return (f"SELECT fit_id, records_changed, rows_skipped, seconds FROM nudge_fit('{name}_docs', 'embedding', "
            f"'{name}_train_queries', '{name}_train_qrels', validation_queries => '{name}_val_queries', "
            f"validation_qrels => '{name}_val_qrels', lock => '{lock}', staged => {staged})")


class App:
    """The simulated application: reader and writer threads at fixed rates."""

    def __init__(self, table, queries, n, readers, writers, read_rate, write_rate, seed):
        self.table, self.queries, self.n = table, queries, n
        self.readers, self.writers = readers, writers
        self.read_rate, self.write_rate = read_rate, write_rate
        self.stop = threading.Event()
        self.samples = []          # (start time, kind, seconds, sqlstate or None)
        self.written = {}          # id -> text of the last successful write
        self.lock = threading.Lock()
        self.next_insert = INSERT_BASE
        self.rng = random.Random(seed)
        self.threads = []

    def start(self):
        for i in range(self.readers):
            self.threads.append(threading.Thread(target=self._loop, args=(self._read, self.read_rate, i), daemon=True))
        for i in range(self.writers):
            self.threads.append(threading.Thread(target=self._loop, args=(self._write, self.write_rate, 100 + i),
                                                 daemon=True))
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()
        self.threads = []
        self.stop.clear()

    def _loop(self, op, rate, seed):
        rng = np.random.default_rng(seed)
        with connect() as c:
            c.execute("SET lock_timeout = '100ms'")
            period, t_next = 1.0 / rate, time.monotonic()
            while not self.stop.is_set():
                t_next += period
                op(c, rng)
                time.sleep(max(0.0, t_next - time.monotonic()))

    def _timed(self, kind, c, sql, args):
        t0 = time.monotonic()
        err = None
        try:
            c.execute(sql, args).fetchall() if kind == "read" else c.execute(sql, args)
        except psycopg.Error as e:
            err = e.sqlstate or "?"
        with self.lock:
            self.samples.append((t0, kind, time.monotonic() - t0, err))
        return err is None

    def _read(self, c, rng):
        q = vec_text(self.queries[rng.integers(len(self.queries))])
        self._timed("read", c, f"SELECT id FROM {self.table} ORDER BY embedding <=> %s::vector LIMIT 10", (q,))

    def _write(self, c, rng):
        v = rng.standard_normal(DIM).astype(np.float32)
        v = vec_text(v / np.linalg.norm(v))
        if rng.random() < 0.5:
            with self.lock:
                rid = self.next_insert
                self.next_insert += 1
            ok = self._timed("insert", c, f"INSERT INTO {self.table} (id, embedding) VALUES (%s, %s::vector)", (rid, v))
        else:
            rid = int(rng.integers(self.n))
            ok = self._timed("update", c, f"UPDATE {self.table} SET embedding = %s::vector WHERE id = %s", (v, rid))
        if ok:
            with self.lock:
                self.written[rid] = v


def pct(xs, p):
    return float(np.percentile(xs, p)) * 1000 if xs else None


def phase_table(samples, t_fit0, t_write, t_fit1):
    """Per phase (statements by start time: before the fit, during its read and computation,
    during its write, after it) and kind: count, errors by SQLSTATE, latency of the successful."""
    bounds = {"before": (-1e18, t_fit0), "fit_read_compute": (t_fit0, t_write), "fit_write": (t_write, t_fit1),
              "during": (t_fit0, t_fit1), "after": (t_fit1, 1e18)}
    out = {}
    for phase, (lo, hi) in bounds.items():
        for kind in ("read", "insert", "update"):
            sel = [(s, e) for (t, k, s, e) in samples if k == kind and lo <= t < hi]
            ok = [s for s, e in sel if e is None]
            errs = {}
            for _, e in sel:
                if e is not None:
                    errs[e] = errs.get(e, 0) + 1
            out[f"{phase}/{kind}"] = {"count": len(sel), "errors": errs, "p50_ms": pct(ok, 50), "p99_ms": pct(ok, 99),
                                      "max_ms": max(ok) * 1000 if ok else None}
    return out


def run_mode(name, lock, app, phase_seconds, fit_threads):
    table = f"{name}_docs"
    app.start()
    time.sleep(phase_seconds)
    with connect() as c:
        # progress NOTICEs at every batch: the time the write phase starts
        c.execute("SET nudge.progress = on")
        c.execute("SET nudge.progress_interval = 0")
        c.execute(f"SET nudge.threads = {fit_threads}")
        marks = {}
        c.add_notice_handler(lambda d: marks.setdefault(d.message_primary.split(": ")[1], time.monotonic())
                             if d.message_primary.count(": ") >= 2 else None)
        t0 = time.monotonic()
        fit_id, changed, skipped, secs = c.execute(fit_sql(name, lock)).fetchone()
        if lock == "staged":  # the write: nudge_apply, committing every batch
            marks["writing rows"] = time.monotonic()
            c.execute("SET nudge.progress = off")
            skipped = c.execute("CALL nudge_apply(%s)", (fit_id,)).fetchone()[1]
        t1 = time.monotonic()
    t_write = marks.get("writing rows", t1)
    time.sleep(phase_seconds)
    app.finish()
    samples, app.samples = app.samples, []
    with connect() as c:
        restored = c.execute("SELECT nudge_revert(%s)", (fit_id,)).fetchone()[0]
    log(f"{lock}: fit {fit_id} {t1 - t0:.1f} s (write {t1 - t_write:.1f} s), {changed} records changed, "
        f"{skipped} skipped, {restored} reverted")
    return {"lock": lock, "fit_id": fit_id, "fit_seconds": t1 - t0, "write_seconds": t1 - t_write,
            "records_changed": changed, "rows_skipped": skipped, "rows_reverted": restored,
            "phases": phase_table(samples, t0, t_write, t1)}


def check_writes(name, n, written, loaded):
    """Every successful application write is the row's value; every row the application never
    wrote holds its loaded value (all fits reverted)."""
    table = f"{name}_docs"
    with connect() as c:
        c.execute("CREATE TEMP TABLE app_writes (id bigint PRIMARY KEY, v vector)")
        with c.cursor() as cur:
            with cur.copy("COPY app_writes (id, v) FROM STDIN") as cp:
                for rid, v in written.items():
                    cp.write_row((rid, v))
        missing = c.execute(f"""SELECT count(*) FROM app_writes a LEFT JOIN {table} t ON t.id = a.id
                                 WHERE t.id IS NULL OR t.embedding::text <> a.v::text""").fetchone()[0]
        changed = c.execute(f"""SELECT count(*) FROM {loaded} AS l LEFT JOIN {table} AS t ON t.id = l.id
                                 WHERE NOT EXISTS (SELECT 1 FROM app_writes a WHERE a.id = l.id)
                                   AND (t.id IS NULL OR t.embedding::text <> l.embedding::text)""").fetchone()[0]
        extra = c.execute(f"SELECT count(*) FROM {table} WHERE id >= {INSERT_BASE} AND id NOT IN (SELECT id FROM app_writes)").fetchone()[0]
    return {"app_writes": len(written), "writes_missing_or_overwritten": missing,
            "other_rows_changed_or_missing": changed, "rows_nobody_wrote": extra}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--phase-seconds", type=float, default=15)
    ap.add_argument("--readers", type=int, default=4)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--read-rate", type=float, default=20, help="k-NN reads per second per reader")
    ap.add_argument("--write-rate", type=float, default=10, help="writes per second per writer")
    ap.add_argument("--modes", default="table,rows,staged")
    ap.add_argument("--fit-threads", type=int, default=0, help="nudge.threads of the fit (0: one per CPU)")
    ap.add_argument("--no-vacuum", action="store_true", help="ANALYZE only before the run (an HNSW vacuum can take minutes)")
    a = ap.parse_args()

    ensure_db()
    corpus = data.synth(a.n)
    data.load(corpus, data.synth_params(a.n))
    name = corpus.name
    with connect() as c:
        c.execute("SET maintenance_work_mem = '4GB'")
        if not c.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", (f"{name}_hnsw",)).fetchone():
            log(f"{name}: building the HNSW index")
            c.execute(f"CREATE INDEX {name}_hnsw ON {name}_docs USING hnsw (embedding vector_cosine_ops)")
        c.execute(f"DELETE FROM {name}_docs WHERE id >= {INSERT_BASE}")
        c.execute(f"DROP TABLE IF EXISTS {name}_loaded")
        c.execute(f"CREATE TABLE {name}_loaded AS SELECT id, embedding FROM {name}_docs")
        c.execute(f"{'' if a.no_vacuum else 'VACUUM '}ANALYZE {name}_docs")
    queries = corpus.sets["test"][1]
    app = App(f"{name}_docs", queries, a.n, a.readers, a.writers, a.read_rate, a.write_rate, 0)
    res = {"machine": machine(), "n": a.n, "dim": DIM, "readers": a.readers, "writers": a.writers,
           "read_rate": a.read_rate, "write_rate": a.write_rate, "phase_seconds": a.phase_seconds,
           "lock_timeout": "100ms", "fit_threads": a.fit_threads, "index": "hnsw (embedding vector_cosine_ops), defaults",
           "measured_at": time.strftime("%Y-%m-%d %H:%M"), "modes": []}
    for lock in a.modes.split(","):
        res["modes"].append(run_mode(name, lock, app, a.phase_seconds, a.fit_threads))
        write_json("load", res)
    res["check"] = check_writes(name, a.n, app.written, f"{name}_loaded")
    log(res["check"])
    with connect() as c:  # the table as loaded again, for the other benchmarks
        c.execute(f"DELETE FROM {name}_docs WHERE id >= {INSERT_BASE}")
        c.execute(f"""UPDATE {name}_docs AS t SET embedding = l.embedding FROM {name}_loaded AS l
                       WHERE t.id = l.id AND t.embedding::text <> l.embedding::text""")
        c.execute(f"DROP TABLE {name}_loaded")
    write_json("load", res)
    for m in res["modes"]:
        for k, v in m["phases"].items():
            print(f"{m['lock']:5} {k:24} n={v['count']:5} err={v['errors']} p50={v['p50_ms'] and round(v['p50_ms'], 1)} "
                  f"p99={v['p99_ms'] and round(v['p99_ms'], 1)} max={v['max_ms'] and round(v['max_ms'], 1)}")


if __name__ == "__main__":
    main()
