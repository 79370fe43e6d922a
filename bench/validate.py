"""The full validation protocol on 10k clients x 256-dim embeddings, 2 LightGBM threads (goal <= 60 s).

5 folds x (fit on 4/5, score the fold and the fixed test clients) with the ptls-experiments binary
parameters from conf/validate/default.yaml. The reference measured in the same run is one single-threaded
LightGBM fit on one fold's training rows (the unit the protocol runs n_jobs of side by side); the ratio
says how many such fits the whole protocol costs (5 fits, 2 at a time: ideally about 2.5-3x).
  PYTHONPATH=source .venv/bin/python bench/validate.py [--clients 10000 --dim 256 --n-jobs 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from llm4trx.core.config import compose
from llm4trx.evaluation.protocol import Labels, cross_validate, fold_threads, make_model
from llm4trx.core.sections import ValidationSpec
from llm4trx.evaluation.validation import downstream_head


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    ids = np.array([f"c{i:06d}" for i in range(args.clients)])
    x = rng.standard_normal((args.clients, args.dim)).astype(np.float32)
    logit = x[:, :8] @ rng.standard_normal(8) + 0.5 * np.sin(3 * x[:, 8])
    y = (logit + rng.normal(0, 1.0, args.clients) > 0).astype(np.int64)
    features = pd.DataFrame(x, index=pd.Index(ids, name="client_id"))
    n_test = args.clients // 10
    folds = np.arange(args.clients - n_test) % 5
    labels = Labels(ids[n_test:], y[n_test:], folds, ids[:n_test], y[:n_test])
    head = downstream_head(ValidationSpec.from_config(compose(["dataset.task=binary"])))

    started = time.perf_counter()
    make_model(head, fold_threads(args.n_jobs, 5)[1]).fit(x[n_test:][folds != 0], y[n_test:][folds != 0])
    t_single = time.perf_counter() - started

    started = time.perf_counter()
    result = cross_validate("bench", features, labels, ["auroc", "accuracy"], head, args.n_jobs, "bench")
    t_protocol = time.perf_counter() - started

    auroc = result["auroc"]
    print(f"{args.clients} clients x {args.dim} dims, {head.params['n_estimators']} trees, n_jobs={args.n_jobs}")
    print(
        f"auroc val {auroc['val_mean']:.4f} ± {auroc['val_std']:.4f}, test {auroc['test_mean']:.4f} ± {auroc['test_std']:.4f}"
    )
    print(f"reference: one LightGBM fit ({fold_threads(args.n_jobs, 5)[1]} thread)  {t_single:6.2f} s")
    print(f"full protocol (5 folds, val + test)  {t_protocol:6.2f} s  (goal <= 60 s)")
    print(f"ratio protocol / single fit: {t_protocol / t_single:.2f}x")


if __name__ == "__main__":
    main()
