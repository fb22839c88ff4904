"""Run nudge-ft 0.1.2 (the reference) on in-memory numpy arrays, in its own process so that
its peak memory is measured alone. Prints one JSON object on stdout.

    python bench/ft_worker.py --data scifact|synth [--n N] --method nudge_n|nudge_m
                              [--reps 3] [--gamma G] [--save out.npy]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import resource
import sys
import time

import numpy as np
import torch
from nudge import NUDGEM, NUDGEN

import data


class NUDGENRec(NUDGEN):
    """Records the gamma of the final _sol_maxm call (the chosen one); nudge-ft returns only
    the embeddings."""

    def _sol_maxm(self, gamma, *a):
        self.last_gamma = gamma
        return super()._sol_maxm(gamma, *a)


class NUDGEMRec(NUDGEM):
    def _get_point_of_most_intersection(self, mins, maxs):
        self.last_gamma = super()._get_point_of_most_intersection(mins, maxs)
        return self.last_gamma


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["scifact", "synth"], required=True)
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--method", choices=["nudge_n", "nudge_m"], default="nudge_n")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gamma", type=float, default=None)
    ap.add_argument("--save", default=None)
    a = ap.parse_args()
    corpus = data.scifact() if a.data == "scifact" else data.synth(a.n)
    docs = np.ascontiguousarray(corpus.docs, dtype=np.float32)
    sets = {}
    for role in ("train", "val"):
        _, qv, rel = corpus.sets[role]
        sets[role] = {"q_embs": np.ascontiguousarray(qv, dtype=np.float32), "q_ans_indx": rel}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, out, model = [], None, None
    for _ in range(a.reps):
        model = NUDGENRec(torch.device("cpu")) if a.method == "nudge_n" else NUDGEMRec(torch.device("cpu"))
        kw = {} if a.gamma is None else {"gamma": a.gamma}
        out = None
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "Calculating G" etc.
            out = model.finetune_embeddings(docs, sets["train"], sets["val"], **kw)
        times.append(time.perf_counter() - t0)
    if a.save:
        np.save(a.save, out)
    g = model.last_gamma
    print(json.dumps({
        "times": times,
        "gamma": float(g.item() if hasattr(g, "item") else g),
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "maxrss_before_fit": rss_before,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    sys.exit(main())
