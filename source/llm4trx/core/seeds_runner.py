"""Several seeds side by side, for scripts/run_multi_seed.sh (parallel_seeds > 1):
`python -m llm4trx.core.seeds_runner --seeds "12 21 42" --parallel 3 -- overrides`.

Each seed runs exactly as `bash scripts/run.sh <overrides> seed=S progress=false` would run it: its settings
from core/check.py, its stages by core/stage_runner.py, the same lines on the console. On Linux the seeds are
forked from this process after it has imported, once, the libraries of every stage a seed will start
(stage_runner.preload): each seed's stage runner would otherwise import them itself, and those imports are the
largest start cost of a seed (llm-foundry ~10 CPU-s, Lightning and ptls ~4 more, measured with
`python -X importtime`), paid once per seed on the same 2 cores that run the seeds. As in stage_runner, this
process never runs torch, starts no thread and no OpenMP pool, so forking it is safe; the CPU threads of the
seeds (OMP_NUM_THREADS) are set by the caller before this process starts, since the OpenMP runtime reads them
when torch is imported. Where stages are not forked (stage_runner.can_fork), and with LLM4TRX_FORK_SEEDS=0
(bench/stage_start.py --seeds compares), each seed is `bash scripts/run.sh`, as before.

SIGINT and SIGTERM reach the seeds' stages directly (the process group, as from the shell); this process waits
for the seeds it started, starts no further group of seeds, and exits with 128 + the signal.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from llm4trx.core import stage_runner
from llm4trx.core.cli import exit_code, exit_without_teardown
from llm4trx.core.errors import Llm4trxError

ROOT = Path(__file__).resolve().parents[3]


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llm4trx.core.seeds_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, help="the seeds, separated by spaces")
    parser.add_argument("--parallel", type=int, required=True, help="seeds run at once")
    parser.add_argument("--shared", default="", help="the seed-independent stages to build first (none: empty)")
    parser.add_argument("--shared-threads", default="", help="their CPU threads (OMP_NUM_THREADS; empty: all)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    return parser.parse_args(argv)


def seed_overrides(overrides: Sequence[str], seed: str) -> list[str]:
    """A seed's overrides, as run_multi_seed.sh gave them to run.sh."""
    return [*overrides, f"seed={seed}", "progress=false"]


def runner_args(overrides: list[str]) -> list[str]:
    """stage_runner's arguments for one seed, from the settings scripts/run.sh would take from core.check;
    raises Llm4trxError as `check --shell` reports it."""
    from llm4trx.core import check

    settings = check.shell_assignments(check.compose_checked(overrides))
    return [
        "--seed", settings["SEED"],
        "--run-dir", settings["RUN_DIR"],
        "--stages", settings["STAGES"],
        "--up-to-date", settings["UP_TO_DATE"],
        "--nproc", settings["NPROC"],
        "--", *overrides,
    ]  # fmt: skip


def stages_to_start(args: list[str]) -> list[str]:
    parsed = stage_runner.parse_args(args)
    skipped = set(parsed.up_to_date.split())
    launched = stage_runner.LAUNCHED if parsed.nproc > 1 else ()
    return [s for s in parsed.stages.split() if s not in skipped and s not in launched]


def fork_seed(args: list[str] | str) -> int:
    """A child running one seed's stage runner (or printing why its settings failed); its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        if isinstance(args, str):
            print(f"error: {args}", file=sys.stderr, flush=True)
            exit_without_teardown(2)
        try:
            code = stage_runner.main(args)
        except SystemExit as stop:
            code = exit_code(stop)
        exit_without_teardown(code)
    return pid


def start_run_sh(overrides: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """`bash scripts/run.sh <overrides>` as a fresh process: a seed where stages are not forked, or the shared pass."""
    return subprocess.Popen(["bash", str(ROOT / "scripts" / "run.sh"), *overrides], env=env)


def start_shared_pass(overrides: list[str], stages: str, threads: str) -> subprocess.Popen:
    """The seed-independent stages, once, as `STAGES=<them> bash scripts/run.sh <overrides> seed=<first>`, with
    the caller's CPU threads (every core unless OMP_NUM_THREADS was set), not the seeds' share."""
    env = {**os.environ, "STAGES": stages}
    if threads:
        env["OMP_NUM_THREADS"] = threads
    else:
        env.pop("OMP_NUM_THREADS", None)
    return start_run_sh(overrides, env)


def seed_settings(overrides: list[str], group: list[str]) -> dict[str, list[str] | str]:
    """Each seed's stage_runner arguments, or the message of the error that stops it."""
    settings: dict[str, list[str] | str] = {}
    for seed in group:
        try:
            settings[seed] = runner_args(seed_overrides(overrides, seed))
        except Llm4trxError as err:
            settings[seed] = str(err)
    return settings


def preload_for(settings: dict[str, list[str] | str], shared_pass: bool) -> None:
    """Import here every stage the seeds will start (not the shared ones while the shared pass builds them:
    the seeds find those built), so that the forked seeds inherit the imports."""
    from llm4trx.core import registry

    per_seed = (registry.SHARED, registry.RAW) if shared_pass else ()
    stages = (s for a in settings.values() if isinstance(a, list) for s in stages_to_start(a))
    for stage in dict.fromkeys(stages):
        if registry.get(stage).scope not in per_seed:
            stage_runner.preload(stage)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seeds, parallel = args.seeds.split(), max(1, args.parallel)
    signals = stage_runner.Signals()
    fork = stage_runner.can_fork() and os.environ.get("LLM4TRX_FORK_SEEDS", "1") != "0"
    if args.shared:
        # The shared pass runs while this process imports the seeds' libraries: its stages are mostly
        # single-threaded, so the imports take the other core instead of waiting after it.
        shared = start_shared_pass([*args.overrides, f"seed={seeds[0]}"], args.shared, args.shared_threads)
        if fork:
            try:
                preload_for(seed_settings(args.overrides, seeds[:parallel]), shared_pass=True)
            except Exception:  # noqa: BLE001 - only a head start: the seeds' settings are judged again below
                pass
        code = shared.wait()
        if code != 0 or signals.received is not None:
            return 128 + signals.received if signals.received is not None else code
    failed: list[str] = []
    for first in range(0, len(seeds), parallel):
        group = seeds[first : first + parallel]
        if fork:
            settings = seed_settings(args.overrides, group)
            preload_for(settings, shared_pass=False)
        children = {}
        for seed in group:
            print(f"=== run_multi_seed.sh: seed {seed} ({os.environ.get('OMP_NUM_THREADS', 'all')} CPU threads)")
            children[seed] = fork_seed(settings[seed]) if fork else start_run_sh(seed_overrides(args.overrides, seed))
        for seed, child in children.items():
            code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) if fork else child.wait()
            code = stage_runner.shell_status(code)
            if code != 0:
                failed.append(seed)
        if signals.received is not None:
            return 128 + signals.received
    if failed:
        print(
            f"run_multi_seed.sh: seeds {' '.join(failed)} failed (see their stage lines above); rerun the same "
            f"command to continue",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
