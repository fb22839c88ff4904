"""Turn bench/out/*.json into the results part of BENCHMARKS.md (between the RESULTS markers;
the prose around them is kept) and the plot bench/results/fit_time_vs_corpus.png."""
from __future__ import annotations

import json
import re

from common import OUT, RESULTS, ROOT

BENCH_MD = ROOT / "BENCHMARKS.md"
PLOT = RESULTS / "fit_time_vs_corpus.png"
BEGIN, END = "<!-- BEGIN RESULTS (bench/report.py) -->", "<!-- END RESULTS -->"


def load(name):
    p = OUT / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def s(x, d=3):
    if x is None:
        return "–"
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.{d}f}"


def mib(b):
    return f"{b / 2**20:.0f} MiB" if b < 2**30 else f"{b / 2**30:.2f} GiB"


def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "–"


def scifact_md(r):
    ft, db = r["nudge_ft"], r["nudge_fit"]
    out = [f"### 1. SciFact: nudge_fit (in the database) vs nudge-ft 0.1.2 (in-memory arrays)\n",
           f"{r['dataset']}; {r['reps']} runs each, median. nudge-ft: `finetune_embeddings` on numpy arrays "
           "already in memory (torch CPU). nudge_fit: one SQL call from the client, reading the tables and "
           "writing the changed rows + backups, committed; validation = the paper's 10% (explicit "
           "`validation_queries`). NUDGE-N is scored with cosine, NUDGE-M with inner product.\n",
           "| method | implementation | gamma search | fit s: median (fastest) | nudge-ft / this: medians (fastest runs) | gamma | test NDCG@10 | capped recall@10 | peak memory |",
           "|---|---|---|---|---|---|---|---|---|",
           f"| – | no fine-tuning | – | – | – | – | {r['no_finetuning']['ndcg@10']:.4f} | {r['no_finetuning']['capped_recall@10']:.4f} | – |"]
    for m, label in (("nudge_n", "NUDGE-N"), ("nudge_m", "NUDGE-M")):
        f = ft[m]
        out.append(f"| {label} | nudge-ft | its rule | {s(f['time']['median'])} ({s(f['time']['min'])}) | 1.0x | {f['gamma']:.4g} | "
                   f"{f['test']['ndcg@10']:.4f} | {f['test']['capped_recall@10']:.4f} | {mib(f['maxrss'])} (process) |")
        for search, what in (("reference", "`'reference'` (parity)"), ("best", "`'best'` (default)")):
            d = db[f"{m}/{search}"]
            out.append(f"| {label} | nudge_fit | {what} | {s(d['time']['median'])} ({s(d['time']['min'])}) | "
                       f"**{ratio(f['time']['median'], d['time']['median'])}** ({ratio(f['time']['min'], d['time']['min'])}) | {d['gamma']:.4g} | "
                       f"{d['test']['test']['ndcg@10']:.4f} | {d['test']['test']['capped_recall@10']:.4f} | "
                       f"{mib(d['backend_vmhwm']['median'])} (backend VmHWM) |")
    out.append("")
    out.append("Same gamma, same vectors: nudge_fit with `gamma =>` the value nudge-ft chose, compared with "
               "nudge-ft's output (float32):\n")
    out.append("| method | gamma | rows changed (nudge_fit) | max abs difference, changed rows | max abs difference, all rows |")
    out.append("|---|---|---|---|---|")
    for m, label in (("nudge_n", "NUDGE-N"), ("nudge_m", "NUDGE-M")):
        v = ft[m]["same_gamma_vectors"]
        out.append(f"| {label} | {v['gamma']:.6g} | {v['records_changed_db']} | {v['moving_rows']['max_abs_diff']:.1e} | "
                   f"{v['all_rows']['max_abs_diff']:.1e} |")
    agree = max(d["test"]["evaluate_vs_numpy"] for d in db.values())
    out.append("\nTest metrics of nudge_fit's rows were computed by the same numpy/pytrec_eval code as "
               "nudge-ft's (tests/reference/nudge_ref.py) on the vectors read back from the table; "
               f"`nudge_evaluate` on the same table agrees with it to {agree:.0e}.\n")
    return "\n".join(out)


def pipeline_md(r):
    out = ["### 2. The pipeline users write today vs one nudge_fit call\n",
           f"SciFact as above; {r['reps']} runs, interleaved, median. Pipeline: psycopg (binary, pgvector "
           "adapters) reads the corpus, queries and labels into numpy; nudge-ft NUDGE-N; the "
           f"{r['rows_written']} rows with a training label are written back (psycopg `executemany` "
           "UPDATE, or binary COPY into a temp table + `UPDATE ... FROM`); commit. torch is imported "
           "before the clock starts.\n",
           "| path | read s | nudge-ft s | write s | total s: median (fastest) | total / nudge_fit (default): medians (fastest runs) |",
           "|---|---|---|---|---|---|"]
    base = r["nudge_fit/nudge_n/best"]["median"]
    base_min = r["nudge_fit/nudge_n/best"]["min"]
    for w, label in (("update", "export -> nudge-ft -> executemany UPDATE"),
                     ("copy", "export -> nudge-ft -> COPY + UPDATE FROM")):
        p = r[f"pipeline_{w}"]
        out.append(f"| {label} | {s(p['read']['median'])} | {s(p['nudge_ft']['median'])} | "
                   f"{s(p['write']['median'])} | {s(p['total']['median'])} ({s(p['total']['min'])}) | "
                   f"**{ratio(p['total']['median'], base)}** ({ratio(p['total']['min'], base_min)}) |")
    for key, label in (("nudge_n/best", "`nudge_fit(...)` NUDGE-N, default gamma search"),
                       ("nudge_n/reference", "`nudge_fit(..., gamma_search => 'reference')`")):
        t = r[f"nudge_fit/{key}"]
        out.append(f"| {label} | | | | {s(t['median'])} ({s(t['min'])}) | {ratio(t['median'], base)} |")
    return "\n".join(out) + "\n"


def scale_md(r):
    out = ["### 3. Scaling: synthetic clustered corpora, 384 dims, 10k train / 1k validation queries\n",
           f"{r['reps']} runs per size, median (nudge-ft at 1M: see its column). Arithmetic "
           "limit = one corpus scan in one backend (`SELECT sum(vector_dims(embedding))`, no parallel "
           "workers) + 2 x validation x rows x 384 flops at the GEMM rate measured just before, in the "
           "same run (numpy/OpenBLAS sgemm 1000x384 by 384x200000 on 2 threads, fastest of 5: the "
           "peak rate makes the limit strictest). Peak memory: `VmHWM` of the backend "
           "from /proc (includes the shared buffers it touched; shared_buffers = 128 MB); nudge-ft: the "
           "worker process's max RSS.\n",
           "| rows | nudge_fit s | limit s (scan + GEMM) | GEMM rate | nudge_fit / limit | backend peak | records changed | gamma (val NDCG@10 before -> after) | nudge-ft s | nudge-ft peak | nudge-ft / nudge_fit |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, x in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
        f = x["nudge_fit"]
        ft = x.get("nudge_ft", {})
        if "time" in ft:
            runs = len(ft["time"]["runs"])
            fts = f"{s(ft['time']['median'])}" + ("" if runs >= 3 else f" ({runs} run)")
            ftm = mib(ft["maxrss"])
            ftr = f"**{ratio(ft['time']['median'], f['time']['median'])}**"
        else:
            fts, ftm, ftr = "not run", ft.get("skipped", "–"), "–"
        out.append(f"| {int(n):,} | {s(f['time']['median'])} | {s(x['arithmetic_limit'])} "
                   f"({s(x['scan']['median'])} + {s(x['gemm_seconds_at_rate'])}) | {x.get('gemm_gflops', r.get('gemm_gflops'))['peak']:.0f} GFLOP/s | "
                   f"**{x['limit_ratio']:.2f}x** | {mib(f['backend_vmhwm']['max'])} | {f['records_changed']} | "
                   f"{f['gamma']:.3g} ({f['validation_before']:.3f} -> {f['validation_after']:.3f}) | {fts} | {ftm} | {ftr} |")
    out += ["", "nudge_evaluate (one call, all 1,000 test queries) vs one exact `ORDER BY embedding <=> q LIMIT 10` "
            "per test query (no index, the server's default plan; timed on a sample of queries and scaled to 1,000):\n",
            "| rows | nudge_evaluate s | SQL s per query (sample) | SQL, 1,000 queries (est.) | SQL / nudge_evaluate | test NDCG@10 (after no fit) |",
            "|---|---|---|---|---|---|"]
    for n, x in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
        e, q = x["nudge_evaluate"], x["sql_knn"]
        out.append(f"| {int(n):,} | {s(e['time']['median'])} | {s(q['per_query']['median'], 4)} (n={q['sample_queries']}) | "
                   f"{s(q['extrapolated_all_queries'])} | **{ratio(q['extrapolated_all_queries'], e['time']['median'])}** | "
                   f"{e['metrics']['ndcg@10']:.4f} |")
    return "\n".join(out) + "\n"


def hnsw_md(r):
    out = ["### 4. Write-back with a pgvector HNSW index: UPDATE in place vs drop + rebuild\n",
           f"Index: {r['index']}, built with maintenance_work_mem = 4GB and one parallel worker. Every "
           "variant runs inside a transaction that is rolled back (the index stays as built); runs: "
           f"{r['reps']} (rebuild at 1M: see runs column).\n",
           "| rows | rows written | fit, index in place s | fit, no index s | drop + fit + CREATE INDEX s | CREATE INDEX alone s | index cost per updated row | in place faster below |",
           "|---|---|---|---|---|---|---|---|"]
    for n, x in sorted(r["sizes"].items(), key=lambda kv: int(kv[0])):
        be = x["break_even_rows"]
        bes = f"~{be:,.0f} rows ({100 * be / int(n):.0f}% of the table)" if be else "–"
        out.append(f"| {int(n):,} | {x['records_changed']} | {s(x['fit_with_index']['median'])} | "
                   f"{s(x['fit_without_index']['median'])} | {s(x['drop_fit_rebuild']['median'])} "
                   + ("(fit without index + the initial build) | " if x.get("rebuild_estimated")
                      else f"({len(x['drop_fit_rebuild']['runs'])} runs) | ")
                   + f"{s(x['rebuild_only']['median'])} ({len(x['rebuild_only']['runs'])} run{'s' if len(x['rebuild_only']['runs']) > 1 else ''}) | "
                   f"{1000 * x['index_seconds_per_updated_row']:.2f} ms | {bes} |")
    return "\n".join(out) + "\n"


def plot(r):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = sorted(int(n) for n in r["sizes"])
    fit = [r["sizes"][str(n)]["nudge_fit"]["time"]["median"] for n in xs]
    lim = [r["sizes"][str(n)]["arithmetic_limit"] for n in xs]
    ftx = [n for n in xs if "time" in r["sizes"][str(n)].get("nudge_ft", {})]
    fty = [r["sizes"][str(n)]["nudge_ft"]["time"]["median"] for n in ftx]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.loglog(xs, fit, "o-", label="nudge_fit (in PostgreSQL, read + fit + write)")
    if ftx:
        ax.loglog(ftx, fty, "s-", label="nudge-ft 0.1.2 NUDGE-N (numpy arrays in memory)")
    ax.loglog(xs, lim, "k--", lw=1, label="arithmetic limit (1 scan + val x corpus GEMM)")
    if ftx and max(xs) > max(ftx):
        ax.annotate("nudge-ft at 1M: killed by the OOM killer\nat 22 GB (23.5 GiB machine; see BENCHMARKS.md)",
                    xy=(max(xs), fit[-1]), xytext=(max(ftx) * 0.9, fty[-1] * 0.8), fontsize=7, ha="left", va="top")
    ax.set_xlabel("corpus rows (384 dims; 10k train, 1k validation queries)")
    ax.set_ylabel("fit time, s (median)")
    ax.set_title("NUDGE-N fit time vs corpus size (2 vCPU)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT)
    return PLOT


def main():
    parts = []
    for name, fn in (("scifact", scifact_md), ("pipeline", pipeline_md), ("scale", scale_md), ("hnsw", hnsw_md)):
        r = load(name)
        if r:
            parts.append(fn(r))
    sc = load("scale")
    if sc and sc["sizes"]:
        p = plot(sc)
        parts.append(f"![fit time vs corpus size]({p.relative_to(ROOT)})\n")
    body = "\n".join(parts)
    text = BENCH_MD.read_text() if BENCH_MD.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{body}\n{END}", text, flags=re.S)
    BENCH_MD.write_text(text)
    print(f"wrote {BENCH_MD}")


if __name__ == "__main__":
    main()
