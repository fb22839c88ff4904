"""k-NN throughput: nudge-core's fused GEMM + top-k against numpy on the same shape, one run.

    python bench/knn_core_vs_numpy.py [M N DIM]      (default 1000 x 200000 x 384)

Runs numpy (matrix product in 50k-row blocks + argpartition top-k, the usual way to do
exact k-NN in numpy) and then `cargo run --release --example core_bench` on the same
shape, and prints both rates and their ratio. numpy uses its BLAS with all threads.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def numpy_knn(q, d, k, cosine):
    if cosine:
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], k), dtype=np.int64)
    for r0 in range(0, d.shape[0], 50_000):
        blk = d[r0:r0 + 50_000]
        s = q @ blk.T
        if cosine:
            s /= np.linalg.norm(blk, axis=1)[None, :]
        cand_s = np.concatenate([best_s, s], axis=1)
        cand_i = np.concatenate([best_i, np.arange(r0, r0 + blk.shape[0])[None, :].repeat(q.shape[0], 0)], axis=1)
        top = np.argpartition(-cand_s, k - 1, axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, top, 1)
        best_i = np.take_along_axis(cand_i, top, 1)
    return best_i


def main():
    m, n, dim = (int(a) for a in sys.argv[1:4]) if len(sys.argv) >= 4 else (1000, 200_000, 384)
    rng = np.random.default_rng(0)
    q = rng.random((m, dim), dtype=np.float32) - 0.5
    d = rng.random((n, dim), dtype=np.float32) - 0.5
    flops = 2.0 * m * n * dim
    results = {}
    for name, k, cosine in (("inner_product", 10, False), ("cosine", 10, True), ("cosine", 100, True)):
        times = []
        for _ in range(3):
            t = time.perf_counter()
            numpy_knn(q, d, k, cosine)
            times.append(time.perf_counter() - t)
        t = sorted(times)[1]
        results[(name, k)] = flops / t / 1e9
        print(f"numpy  k-nn {m} x {n} x {dim} {name:<13} k={k:<3}: {t:.3f}s  {flops / t / 1e9:.1f} GFLOP/s (median of 3)")
    t = time.perf_counter()
    np.dot(q, d.T)
    print(f"numpy  plain GEMM (no top-k): {flops / (time.perf_counter() - t) / 1e9:.1f} GFLOP/s")

    env = dict(os.environ, NUDGE_BENCH_NO_SYNTH_FIT="1")
    out = subprocess.run(
        ["cargo", "run", "-q", "-p", "nudge-core", "--release", "--example", "core_bench", "--",
         "/nonexistent", str(m), str(n), str(dim)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    print(out.strip())
    for line in out.splitlines():
        mm = re.search(r"(\w+)\s+k=(\d+)\s+threads (\d+): .* ([\d.]+) GFLOP/s", line)
        if mm and mm.group(3) == str(os.cpu_count()):
            key = (mm.group(1), int(mm.group(2)))
            if key in results:
                print(f"ratio nudge-core / numpy, {key[0]} k={key[1]}, {mm.group(3)} threads: "
                      f"{float(mm.group(4)) / results[key]:.2f}x")


if __name__ == "__main__":
    main()
