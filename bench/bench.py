"""nudge benchmarks. Every comparison runs side by side in one invocation on one machine;
times are medians of --reps runs (wall clock seen by the client). Results go to
bench/out/<section>.json; bench/report.py turns them into BENCHMARKS.md and the plot.

    python bench/bench.py scifact pipeline scale hnsw [--reps 3] [--sizes 10000,100000,1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

import data
from common import (DIM, OUT, R, ROOT, backend_pid, connect, ensure_db, gemm_rate, log, machine,
                    median, proc_status, summary, timeit, write_json)

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- helpers

def run_ft(data_kind, method, reps, n=0, gamma=None, save=None, timeout=3600):
    cmd = [PY, os.path.join(HERE, "ft_worker.py"), "--data", data_kind, "--method", method,
           "--reps", str(reps)]
    if n:
        cmd += ["--n", str(n)]
    if gamma is not None:
        cmd += ["--gamma", repr(gamma)]
    if save:
        cmd += ["--save", save]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_sql(name, method="nudge_n", gamma_search="best", gamma=None, explicit_val=True):
    args = [f"'{name}_docs'", "'embedding'", f"'{name}_train_queries'", f"'{name}_train_qrels'",
            f"method => '{method}'", f"gamma_search => '{gamma_search}'"]
    if explicit_val:
        args += [f"validation_queries => '{name}_val_queries'", f"validation_qrels => '{name}_val_qrels'"]
    if gamma is not None:
        args.append(f"gamma => {gamma!r}")
    return f"SELECT * FROM nudge_fit({', '.join(args)})"


FIT_COLS = ["fit_id", "method", "gamma", "records_changed", "validation_before", "validation_after", "seconds"]


def db_fit(name, reps, inspect=None, **kw):
    """Run nudge_fit reps times, each on a fresh connection (so the backend's VmHWM is this
    fit's), autocommit (the commit is timed), then revert it and VACUUM (untimed).
    inspect(conn, fit_row) runs after the last rep, before the revert."""
    sql = fit_sql(name, **kw)
    times, rows, hwm = [], [], []
    extra = None
    for i in range(reps):
        with connect() as c:
            pid = backend_pid(c)
            # load the library first (untimed), as in any session that has used it before;
            # the pipeline likewise imports torch before its clock starts
            c.execute("LOAD 'nudge'")
            t0 = time.perf_counter()
            row = c.execute(sql).fetchone()
            times.append(time.perf_counter() - t0)
            st = proc_status(pid)
            hwm.append(st["VmHWM"])
            row = dict(zip(FIT_COLS, row))
            rows.append(row)
            if inspect is not None and i == reps - 1:
                extra = inspect(c, row)
            c.execute("SELECT nudge_revert(%s)", (row["fit_id"],))
            c.execute(f"VACUUM {name}_docs")
    last = rows[-1]
    return {"time": summary(times), "in_function_seconds": summary([r["seconds"] for r in rows]),
            "gamma": last["gamma"], "records_changed": last["records_changed"],
            "validation_before": last["validation_before"], "validation_after": last["validation_after"],
            "backend_vmhwm": summary(hwm), "extra": extra}


def read_table_vectors(conn, table, ids):
    register_vector(conn)
    got = {}
    with conn.cursor(binary=True) as cur:
        for rid, v in cur.execute(f"SELECT id, embedding FROM {table}"):
            got[rid] = v
    return np.stack([_np(got[i]) for i in ids])


def _np(v):
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def test_metrics(corpus, D, distance="cosine"):
    ids, qv, rel = corpus.sets["test"]
    qrels = {q: {corpus.doc_ids[d]: 1 for d in r} for q, r in zip(ids, rel)}
    m = R.evaluate_embeddings(D, corpus.doc_ids, qv, ids, qrels, 10, distance)
    return {"ndcg@10": m["ndcg"], "capped_recall@10": m["capped_recall"], "recall@10": m["recall"]}


def db_evaluate(conn, name, distance="cosine"):
    r = conn.execute(f"SELECT * FROM nudge_evaluate('{name}_docs', 'embedding', '{name}_test_queries', "
                     f"'{name}_test_qrels', k => 10, distance => '{distance}')").fetchone()
    return {"queries": r[0], "ndcg@10": r[1], "recall@10": r[2], "capped_recall@10": r[3]}


def vector_diff(a, b):
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    rows = np.any(a != b, axis=1)
    return {"max_abs_diff": float(d.max()), "rows_not_bit_identical": int(rows.sum())}


# --------------------------------------------------------------------------- 1. SciFact

def scifact_pristine():
    corpus = data.scifact()
    data.load(corpus, {"name": "scifact", "version": 1})
    with connect() as c:
        if not np.array_equal(read_table_vectors(c, "sf_docs", corpus.doc_ids), corpus.docs):
            log("sf_docs differs from the shipped vectors: reloading")
            data.load(corpus, {"name": "scifact", "version": 1}, force=True)
    return corpus


def section_scifact(reps):
    corpus = scifact_pristine()
    res = {"machine": machine(), "reps": reps, "dataset": "SciFact minilm, paper split 776/110/223 (seed 0)"}
    res["no_finetuning"] = test_metrics(corpus, corpus.docs)
    ft, db = {}, {}
    for method in ("nudge_n", "nudge_m"):
        dist = "cosine" if method == "nudge_n" else "inner_product"
        path = f"/tmp/nudge-bench-ft-{method}.npy"

        def inspect(c, row, dist=dist):
            D = read_table_vectors(c, "sf_docs", corpus.doc_ids)
            t, e = test_metrics(corpus, D, dist), db_evaluate(c, "sf", dist)
            return {"test": t, "nudge_evaluate": e,
                    "evaluate_vs_numpy": max(abs(t[k] - e[k]) for k in ("ndcg@10", "capped_recall@10", "recall@10"))}

        # interleaved, one run of each per round, so that noise from the machine's other
        # users hits all of them alike
        ft_runs, db_runs = [], {"reference": [], "best": []}
        for i in range(reps):
            log(f"scifact: {method} round {i + 1}/{reps}")
            ft_runs.append(run_ft("scifact", method, 1, save=path))
            for search in ("reference", "best"):
                db_runs[search].append(db_fit("sf", 1, inspect=inspect if i == reps - 1 else None,
                                              method=method, gamma_search=search))
        r = ft_runs[-1]
        new_ft = np.load(path)
        ft[method] = {"time": summary([x["times"][0] for x in ft_runs]), "gamma": r["gamma"],
                      "maxrss": max(x["maxrss"] for x in ft_runs), "test": test_metrics(corpus, new_ft, dist)}
        for search, runs in db_runs.items():
            out = dict(runs[-1])
            out["time"] = summary([x["time"]["median"] for x in runs])
            out["in_function_seconds"] = summary([x["in_function_seconds"]["median"] for x in runs])
            out["backend_vmhwm"] = summary([x["backend_vmhwm"]["median"] for x in runs])
            out["test"] = out.pop("extra")
            db[f"{method}/{search}"] = out
        # same gamma -> same vectors?
        log(f"scifact: nudge_fit {method} at nudge-ft's gamma")
        same = db_fit("sf", 1, inspect=lambda c, row: read_table_vectors(c, "sf_docs", corpus.doc_ids),
                      method=method, gamma=r["gamma"])
        D = same.pop("extra")
        changed_db = np.any(D != corpus.docs, axis=1)
        moving = sorted({d for rel in corpus.sets["train"][2] for d in rel})
        ft[method]["same_gamma_vectors"] = {
            "gamma": r["gamma"], "records_changed_db": same["records_changed"],
            "all_rows": vector_diff(D, new_ft),
            "moving_rows": vector_diff(D[moving], new_ft[moving]),
            "rows_changed_db": int(changed_db.sum()),
        }
    res["nudge_ft"], res["nudge_fit"] = ft, db
    write_json("scifact", res)


# --------------------------------------------------------------------------- 2. pipeline

def pipeline_once(write, method="nudge_n"):
    """What a user writes today: read the table with psycopg into numpy, run nudge-ft, write
    the changed rows back, commit. Returns (phase times, moving ids)."""
    from nudge import NUDGEN
    import contextlib, io, torch
    t = {}
    t0 = time.perf_counter()
    conn = psycopg.connect(dbname=os.environ.get("NUDGE_BENCH_DB", "nudge_bench"))
    register_vector(conn)
    with conn.cursor(binary=True) as cur:
        rows = cur.execute("SELECT id, embedding FROM sf_docs").fetchall()
        ids = [r[0] for r in rows]
        D = np.stack([_np(r[1]) for r in rows])
        row_of = {d: i for i, d in enumerate(ids)}
        sets = {}
        for role in ("train", "val"):
            qrows = cur.execute(f"SELECT id, embedding FROM sf_{role}_queries ORDER BY id").fetchall()
            rel = {}
            for q, d in cur.execute(f"SELECT query_id, doc_id FROM sf_{role}_qrels WHERE score > 0"):
                rel.setdefault(q, []).append(row_of[d])
            sets[role] = {"q_embs": np.stack([_np(r[1]) for r in qrows]),
                          "q_ans_indx": [rel.get(r[0], []) for r in qrows]}
    t["read"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        new = NUDGEN(torch.device("cpu")).finetune_embeddings(D, sets["train"], sets["val"])
    t["nudge_ft"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    moving = sorted({i for rel in sets["train"]["q_ans_indx"] for i in rel})
    with conn.cursor() as cur:
        if write == "update":
            cur.executemany("UPDATE sf_docs SET embedding = %s WHERE id = %s",
                            [(new[i], ids[i]) for i in moving])
        else:
            cur.execute("CREATE TEMP TABLE nudged (id text, embedding vector(384)) ON COMMIT DROP")
            with cur.copy("COPY nudged (id, embedding) FROM STDIN (FORMAT BINARY)") as cp:
                cp.set_types(["text", "vector"])
                for i in moving:
                    cp.write_row((ids[i], new[i]))
            cur.execute("UPDATE sf_docs d SET embedding = n.embedding FROM nudged n WHERE d.id = n.id")
    conn.commit()
    t["write"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    conn.close()
    return t, [ids[i] for i in moving]


def section_pipeline(reps):
    corpus = scifact_pristine()
    with connect() as c:
        c.execute("DROP TABLE IF EXISTS sf_docs_orig")
        c.execute("CREATE TABLE sf_docs_orig AS SELECT * FROM sf_docs")

    def restore():
        with connect() as c:
            c.execute("UPDATE sf_docs d SET embedding = o.embedding FROM sf_docs_orig o "
                      "WHERE o.id = d.id AND d.embedding IS DISTINCT FROM o.embedding")
            c.execute("VACUUM sf_docs")

    import torch  # noqa: F401  (imported before timing, as a long-running user process would)
    res = {"machine": machine(), "reps": reps}
    phases = {"update": [], "copy": []}
    fit_times = {"nudge_n/best": [], "nudge_n/reference": []}
    for _ in range(reps):  # interleaved: pipeline(update), pipeline(copy), nudge_fit x2
        for w in ("update", "copy"):
            t, moving = pipeline_once(w)
            phases[w].append(t)
            restore()
        for key in fit_times:
            m, s = key.split("/")
            fit_times[key].append(db_fit("sf", 1, method=m, gamma_search=s)["time"]["median"])
    for w, ts in phases.items():
        res[f"pipeline_{w}"] = {k: summary([t[k] for t in ts]) for k in ts[0]}
    res["rows_written"] = len(moving)
    for key, ts in fit_times.items():
        res[f"nudge_fit/{key}"] = summary(ts)
    write_json("pipeline", res)


# --------------------------------------------------------------------------- 3. scale

def scan_seconds(name, reps):
    """One corpus scan in one backend: every vector read (vector_dims touches each datum)."""
    with connect() as c:
        c.execute("SET max_parallel_workers_per_gather = 0")
        times, _ = timeit(lambda: c.execute(f"SELECT sum(vector_dims(embedding)) FROM {name}_docs").fetchone(), reps)
    return times


def sql_knn_per_query(name, corpus, sample, reps):
    """The obvious alternative to nudge_evaluate: one exact ORDER BY <=> LIMIT 10 per query
    (no index; the server's default plan, which may use parallel workers)."""
    ids, qv, rel = corpus.sets["test"]
    per = []
    with connect() as c:
        register_vector(c)
        for _ in range(reps):
            t0 = time.perf_counter()
            for q in qv[:sample]:
                c.execute(f"SELECT id FROM {name}_docs ORDER BY embedding <=> %s LIMIT 10", (q,)).fetchall()
            per.append((time.perf_counter() - t0) / sample)
    return per


def mem_available():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) * 1024
    return 0


def section_scale(reps, sizes, ft_reps_big=1, ft_max_rows=100_000):
    # sizes measured in earlier runs are kept (each size's comparisons are all from one run)
    prev = OUT / "scale.json"
    res = json.loads(prev.read_text()) if prev.exists() else {}
    res.update({"machine": machine(), "reps": reps})
    res.setdefault("sizes", {})
    ft_points = []  # (rows, peak RSS) of nudge-ft runs: a line through them estimates the next
    for n in sizes:
        corpus = data.synth(n)
        data.load(corpus, data.synth_params(n))
        name = corpus.name
        r = {"n": n, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
        rate, gt = gemm_rate()
        r["gemm_gflops"] = {"peak": rate, "runs": gt,
                            "what": "numpy/OpenBLAS sgemm 1000x384 by 384x200000, 2 threads, fastest of 5"}
        log(f"scale {n}: GEMM {rate:.0f} GFLOP/s; scan")
        scan = scan_seconds(name, reps)
        nval = len(corpus.sets["val"][0])
        gemm_s = 2.0 * nval * n * DIM / (rate * 1e9)
        r["scan"] = summary(scan)
        r["gemm_seconds_at_rate"] = gemm_s
        r["arithmetic_limit"] = median(scan) + gemm_s
        log(f"scale {n}: nudge_fit")
        r["nudge_fit"] = db_fit(name, reps)
        r["nudge_fit"].pop("extra")
        r["limit_ratio"] = r["nudge_fit"]["time"]["median"] / r["arithmetic_limit"]
        # nudge-ft, if its measured memory per row allows
        est = 0
        if len(ft_points) >= 2:
            (n0, m0), (n1, m1) = ft_points[-2:]
            est = m1 + (m1 - m0) / (n1 - n0) * (n - n1)
        budget = 0.8 * mem_available()
        if n > ft_max_rows:
            r["nudge_ft"] = {"skipped": f"not run above {ft_max_rows:,} rows (--ft-max-rows)",
                             "estimated_peak": est}
        elif est > budget:
            r["nudge_ft"] = {"skipped": f"estimated peak {est / 2**30:.1f} GiB (line through the smaller runs) > "
                                        f"80% of the {budget / 0.8 / 2**30:.1f} GiB available",
                             "estimated_peak": est}
        else:
            log(f"scale {n}: nudge-ft")
            try:
                fr = run_ft("synth", "nudge_n", reps if n < 1_000_000 else ft_reps_big, n=n)
                r["nudge_ft"] = {"time": summary(fr["times"]), "gamma": fr["gamma"], "maxrss": fr["maxrss"]}
                ft_points.append((n, fr["maxrss"]))
            except subprocess.CalledProcessError as e:
                why = "killed (SIGKILL: the kernel's OOM killer, see dmesg)" if e.returncode == -9 else f"exit {e.returncode}"
                r["nudge_ft"] = {"skipped": f"failed: {why}", "estimated_peak": est}
                log(f"scale {n}: nudge-ft {why}")
        log(f"scale {n}: evaluate")
        with connect() as c:
            ev_t, ev = timeit(lambda: db_evaluate(c, name), reps)
        r["nudge_evaluate"] = {"time": summary(ev_t), "metrics": ev}
        sample = {10_000: 100, 100_000: 20}.get(n, 5)
        per = sql_knn_per_query(name, corpus, sample, reps)
        nq = len(corpus.sets["test"][0])
        r["sql_knn"] = {"sample_queries": sample, "per_query": summary(per),
                        "extrapolated_all_queries": median(per) * nq, "queries": nq}
        res["sizes"][str(n)] = r
        write_json("scale", res)  # partial results survive an interrupted run
    return res


# --------------------------------------------------------------------------- 4. HNSW

def section_hnsw(reps, sizes, rebuild_reps_big=0):
    prev = OUT / "hnsw.json"  # sizes measured in earlier runs are kept
    res = json.loads(prev.read_text()) if prev.exists() else {}
    res.update({"machine": machine(), "reps": reps,
                "index": "hnsw (embedding vector_cosine_ops), m = 16, ef_construction = 64 (defaults)"})
    res.setdefault("sizes", {})
    for n in sizes:
        corpus = data.synth(n)
        data.load(corpus, data.synth_params(n))
        name = corpus.name
        r = {"n": n, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
        fit = fit_sql(name)
        with connect() as c:
            c.execute("SET maintenance_work_mem = '4GB'")
            c.execute("SET max_parallel_maintenance_workers = 1")
            c.execute(f"DROP INDEX IF EXISTS {name}_hnsw")
            log(f"hnsw {n}: build")
            t0 = time.perf_counter()
            c.execute(f"CREATE INDEX {name}_hnsw ON {name}_docs USING hnsw (embedding vector_cosine_ops)")
            r["initial_build"] = time.perf_counter() - t0

            def in_tx(stmts):
                c.execute("BEGIN")
                t0 = time.perf_counter()
                out = None
                for s in stmts:
                    cur = c.execute(s)
                    if cur.description:
                        out = cur.fetchone()
                dt = time.perf_counter() - t0
                c.execute("ROLLBACK")  # the table and its index are as before
                return dt, out

            t_in, t_none, t_re, t_build = [], [], [], []
            nre = reps if n < 1_000_000 else rebuild_reps_big
            for i in range(reps):
                log(f"hnsw {n}: rep {i}")
                dt, row = in_tx([fit])
                t_in.append(dt)
                changed = row[3]
                dt, _ = in_tx([f"DROP INDEX {name}_hnsw", fit])
                t_none.append(dt)
                if i < nre:
                    c.execute("BEGIN")
                    t0 = time.perf_counter()
                    c.execute(f"DROP INDEX {name}_hnsw")
                    c.execute(fit)
                    t1 = time.perf_counter()
                    c.execute(f"CREATE INDEX {name}_hnsw ON {name}_docs USING hnsw (embedding vector_cosine_ops)")
                    t2 = time.perf_counter()
                    c.execute("ROLLBACK")
                    t_re.append(t2 - t0)
                    t_build.append(t2 - t1)
            r["records_changed"] = changed
            r["fit_with_index"] = summary(t_in)
            r["fit_without_index"] = summary(t_none)
            if t_re:
                r["drop_fit_rebuild"] = summary(t_re)
                r["rebuild_only"] = summary(t_build)
            else:
                # not repeated (a build of 1M x 384 takes many minutes on 2 cores): the initial
                # build of this run stands for the rebuild, after the measured fit without index
                r["rebuild_only"] = summary([r["initial_build"]])
                r["drop_fit_rebuild"] = summary([median(t_none) + r["initial_build"]])
                r["rebuild_estimated"] = True
            per_row = (median(t_in) - median(t_none)) / max(changed, 1)
            r["index_seconds_per_updated_row"] = per_row
            r["break_even_rows"] = r["rebuild_only"]["median"] / per_row if per_row > 0 else None
            c.execute(f"DROP INDEX {name}_hnsw")
            c.execute(f"VACUUM {name}_docs")
        res["sizes"][str(n)] = r
        write_json("hnsw", res)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sections", nargs="*", default=["scifact", "pipeline", "scale", "hnsw"])
    ap.add_argument("--reps", type=int, default=3, help="runs per measurement (scale, hnsw)")
    ap.add_argument("--reps-small", type=int, default=5, help="runs per measurement on SciFact (scifact, pipeline)")
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--hnsw-sizes", default="100000,1000000")
    ap.add_argument("--ft-reps-big", type=int, default=1, help="nudge-ft repetitions at 1M rows")
    ap.add_argument("--ft-max-rows", type=int, default=100_000, help="largest corpus nudge-ft runs on")
    ap.add_argument("--rebuild-reps-big", type=int, default=0,
                    help="HNSW drop+fit+rebuild repetitions at 1M rows (0: the run's initial build stands for it)")
    a = ap.parse_args()
    ensure_db()
    for s in a.sections:
        t0 = time.time()
        log(f"== {s}")
        if s == "scifact":
            section_scifact(a.reps_small)
        elif s == "pipeline":
            section_pipeline(a.reps_small)
        elif s == "scale":
            section_scale(a.reps, [int(x) for x in a.sizes.split(",") if x], a.ft_reps_big, a.ft_max_rows)
        elif s == "hnsw":
            section_hnsw(a.reps, [int(x) for x in a.hnsw_sizes.split(",") if x], a.rebuild_reps_big)
        else:
            sys.exit(f"unknown section {s}")
        log(f"== {s} done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
