"""How fast this host is right now: a fixed single-thread workload, so that times measured on different runs
(the test suite's above all) can be compared as ratios to it rather than as raw seconds.

The same 2-core machine ran near-identical code's suite in 504 s one day and 602 s another (821 vs ~985 CPU-s):
the host's speed, not the code, moved. `.ci/run` prints this figure before and after the tests, so every suite
time in the docs comes with the reference measured in the same run.

The workload: a pure-Python loop (interpreter speed: what pytest, Hydra and the stages' glue spend) and a
float32 matrix product with one thread (what the tiny models spend), each timed `--repeats` times; the median
of each, and their sum as the reference.

    .venv/bin/python bench/host_speed.py            # prints "host reference 1.04 s (python loop 0.55 s, ...)"
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def python_loop(n: int = 10_000_000) -> float:
    start = time.perf_counter()
    total = 0
    for i in range(n):
        total += (i * 7) % 13
    assert total > 0
    return time.perf_counter() - start


def matmul(size: int = 512, repeats: int = 200) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32)
    start = time.perf_counter()
    for _ in range(repeats):
        a = (a @ b) * np.float32(1e-2)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits  # pinned (scikit-learn's)

    py = statistics.median(python_loop() for _ in range(args.repeats))
    with threadpool_limits(1):  # one BLAS thread whatever the caller exported (OMP_NUM_THREADS)
        mm = statistics.median(matmul() for _ in range(args.repeats))
    load = os.getloadavg()[0]
    print(f"host reference {py + mm:.2f} s (python loop {py:.2f} s, 1-thread matmul {mm:.2f} s; load {load:.1f})")


if __name__ == "__main__":
    main()
