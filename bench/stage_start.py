"""What starting a stage costs: each `python -m llm4trx.<stage>` process before it does its first work.

For every stage, in one run on this machine:
- import: `python -c "import llm4trx.<stage>"` (the stage module and everything it imports at module level);
- skip: `python -m llm4trx.<stage> experiment=smoke paths.output_root=ROOT ...` on an up-to-date run folder
  (the stage finds its _SUCCESS.json and exits: the whole start, Hydra composition included), with --root;
each the best of --repeats, as a ratio to `python -c "import torch"` measured in the same run (and to an empty
interpreter, `python -c pass`).

    PYTHONPATH=source .venv/bin/python bench/stage_start.py                       # imports only
    PYTHONPATH=source .venv/bin/python bench/stage_start.py --root /tmp/out --seed 12   # + the skip path
    (ROOT: a paths.output_root where `bash scripts/run.sh experiment=smoke paths.output_root=ROOT seed=12`
    has finished; `--build` makes one first, a small one: --clients clients, 4 pretraining steps)
    PYTHONPATH=source .venv/bin/python bench/stage_start.py --importtime export   # top imports of one stage
    PYTHONPATH=source .venv/bin/python bench/stage_start.py --pipeline            # what the stage runner saves
    PYTHONPATH=source .venv/bin/python bench/stage_start.py --seeds 3             # what the seeds runner saves

--pipeline: the whole tiny pipeline of one seed through scripts/run.sh (--clients clients, 10 pretraining
steps, a fresh output root each time), with its stages forked from the stage runner that keeps their imports
(core/stage_runner.py) against each stage started as a fresh process (LLM4TRX_FORK=0), alternating, best of
--repeats: each stage's wall seconds as run.sh counts them (start included), the total wall and CPU seconds,
and the ratio fresh / forked.

--seeds N: N tiny seeds side by side through scripts/run_multi_seed.sh (parallel_seeds=N, the shared stages
included, a fresh output root each time), the seeds forked from the seeds runner that imports their stages'
libraries once while the shared stages are built (core/seeds_runner.py) against each seed its own run.sh
(LLM4TRX_FORK_SEEDS=0, what run_multi_seed.sh did before), alternating, best of --repeats: wall and CPU seconds
and the ratio run.sh / forked.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

STAGES = ["prepare", "text", "tokenizer", "shards", "pretrain", "export", "embed", "coles", "validate", "report"]
ENV = {
    **os.environ,
    "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "source"),
    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
}


def wall(argv: list[str], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        best = min(best, time.perf_counter() - start)
    return best


def top_imports(stage: str, n: int = 15) -> None:
    """The slowest imports (cumulative microseconds) of `import llm4trx.<stage>`, from -X importtime."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import llm4trx.{stage}"], env=ENV, capture_output=True, text=True
    )
    rows = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.split("|")
            rows.append((int(cumulative), name.rstrip()))
    for us, name in sorted(rows, reverse=True)[:n]:
        print(f"  {us / 1e6:6.2f} s  {name}")


def build(root: Path, clients: int, seed: int) -> list[str]:
    overrides = [
        "experiment=smoke",
        f"paths.output_root={root}",
        f"seed={seed}",
        "progress=false",
        f"dataset.n_clients={clients}",
        "trainer.max_duration=4ba",
        "trainer.eval_interval=4ba",
        "trainer.save_interval=4ba",
        "coles.max_epochs=1",
    ]
    for stage in STAGES:
        subprocess.run(
            [sys.executable, "-m", f"llm4trx.{stage}", *overrides], env=ENV, check=True, stdout=subprocess.DEVNULL
        )
    return overrides


def tiny(clients: int) -> list[str]:
    """A tiny seed's overrides: `clients` clients, 10 pretraining steps, one CoLES epoch, no progress bars."""
    steps = ["trainer.max_duration=10ba", "trainer.eval_interval=5ba", "trainer.save_interval=10ba"]
    return [f"dataset.n_clients={clients}", *steps, "coles.max_epochs=1", "progress=false"]


def timed_script(script: str, overrides: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """`bash <script> experiment=smoke <overrides>` into a fresh output root: (wall s, CPU s of it and its
    children, its stdout); exits with its output when it fails."""
    import resource
    import tempfile

    with tempfile.TemporaryDirectory(prefix="stage-start-") as root:
        argv = ["bash", script, "experiment=smoke", f"paths.output_root={root}", *overrides]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(
            argv, env={**ENV, **env}, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{script} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), proc.stdout


def best_of(run, repeats: int) -> dict:
    """{True: the fastest run(True), False: the fastest run(False)} by wall time, alternating the two so that a
    change of load falls on both."""
    best: dict = {}
    for _ in range(repeats):
        for fork in (True, False):
            result = run(fork)
            if fork not in best or result[0] < best[fork][0]:
                best[fork] = result
    return best


def pipeline_run(fork: bool, clients: int) -> tuple[float, float, dict[str, int]]:
    """One tiny seed through scripts/run.sh: (wall s, CPU s of it and its children, {stage: wall s})."""
    import re

    elapsed, cpu, stdout = timed_script(
        "scripts/run.sh", ["seed=1", *tiny(clients)], {"LLM4TRX_FORK": "1" if fork else "0"}
    )
    finished = re.search(r"finished in \d+ s \((.*)\)", stdout).group(1)
    stages = {name: int(s[:-1]) for name, s in (item.split() for item in finished.split(", ")) if s[:-1].isdigit()}
    return elapsed, cpu, stages


def seeds_run(fork: bool, clients: int, seeds: int) -> tuple[float, float]:
    """N tiny seeds through scripts/run_multi_seed.sh: (wall s, CPU s of it and its children)."""
    numbers = ",".join(str(s) for s in range(1, seeds + 1))
    overrides = [f"seeds=[{numbers}]", f"parallel_seeds={seeds}", *tiny(clients)]
    elapsed, cpu, _ = timed_script("scripts/run_multi_seed.sh", overrides, {"LLM4TRX_FORK_SEEDS": "1" if fork else "0"})
    return elapsed, cpu


def compare_seeds(clients: int, seeds: int, repeats: int) -> None:
    best = best_of(lambda fork: seeds_run(fork, clients, seeds), repeats)
    (forked_wall, forked_cpu), (script_wall, script_cpu) = best[True], best[False]
    print(
        f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}; {seeds} tiny seeds side by side "
        f"({clients} clients), best of {repeats}"
    )
    print(f"{'':5s} {'forked':>8s} {'run.sh':>8s}")
    print(f"{'wall':5s} {forked_wall:8.1f} {script_wall:8.1f}   run.sh / forked {script_wall / forked_wall:.2f}x")
    print(f"{'CPU':5s} {forked_cpu:8.1f} {script_cpu:8.1f}   run.sh / forked {script_cpu / forked_cpu:.2f}x")


def compare_pipeline(clients: int, repeats: int) -> None:
    best = best_of(lambda fork: pipeline_run(fork, clients), repeats)
    forked, fresh = best[True], best[False]
    print(
        f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}; one tiny seed ({clients} clients), best of {repeats}"
    )
    print(f"{'stage':10s} {'forked s':>9s} {'fresh s':>8s}")
    for stage in forked[2]:
        print(f"{stage:10s} {forked[2][stage]:9d} {fresh[2].get(stage, 0):8d}")
    print(f"{'wall':10s} {forked[0]:9.1f} {fresh[0]:8.1f}   fresh / forked {fresh[0] / forked[0]:.2f}x")
    print(f"{'CPU':10s} {forked[1]:9.1f} {fresh[1]:8.1f}   fresh / forked {fresh[1] / forked[1]:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=None, help="paths.output_root of a finished smoke run (skip path)")
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--overrides", default="", help="extra overrides of the finished run (space-separated)")
    ap.add_argument("--build", action="store_true", help="build a small finished run into --root first")
    ap.add_argument("--clients", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--importtime", default=None, help="print the slowest imports of this stage and exit")
    ap.add_argument(
        "--source",
        default=None,
        help="the llm4trx source folder to measure (default: this "
        "checkout's; e.g. `git archive <commit> source | tar -x -C /tmp/before` for a before/after)",
    )
    ap.add_argument("--pipeline", action="store_true", help="one tiny seed through run.sh: forked vs fresh stages")
    ap.add_argument("--seeds", type=int, default=0, help="N tiny seeds side by side: forked seeds vs run.sh each")
    args = ap.parse_args()
    if args.seeds:
        compare_seeds(args.clients, args.seeds, args.repeats)
        return
    if args.pipeline:
        compare_pipeline(args.clients, args.repeats)
        return
    if args.source:
        ENV["PYTHONPATH"] = str(Path(args.source).resolve())
    if args.importtime:
        top_imports(args.importtime)
        return
    py = sys.executable
    overrides = [
        "experiment=smoke",
        f"paths.output_root={args.root}",
        f"seed={args.seed}",
        "progress=false",
        *args.overrides.split(),
    ]
    if args.root and args.build:
        overrides = build(Path(args.root), args.clients, args.seed) or overrides
    empty = wall([py, "-c", "pass"], args.repeats)
    torch_s = wall([py, "-c", "import torch"], args.repeats)
    print(
        f"{len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.2f}; best of {args.repeats}: "
        f"python -c pass {empty:.2f} s, python -c 'import torch' {torch_s:.2f} s (the reference)"
    )
    print(f"{'stage':10s} {'import s':>9s} {'/ torch':>8s}" + (f" {'skip s':>8s} {'/ torch':>8s}" if args.root else ""))
    for stage in args.stages.split(","):
        imported = wall([py, "-c", f"import llm4trx.{stage}"], args.repeats)
        line = f"{stage:10s} {imported:9.2f} {imported / torch_s:7.2f}x"
        if args.root:
            skipped = wall([py, "-m", f"llm4trx.{stage}", *overrides], args.repeats)
            line += f" {skipped:8.2f} {skipped / torch_s:7.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
