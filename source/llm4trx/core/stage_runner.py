"""One seed's stages in order, for scripts/run.sh: `python -m llm4trx.core.stage_runner --seed S ... -- overrides`.

Each stage is its own process, as `python -m llm4trx.<stage> <overrides>` would be (its own Hydra run, log
file, signal handlers and exit status), but on Linux it is forked from this process instead of started
afresh: before forking a stage, this process imports the stage's module and the libraries it declares in
`PRELOAD`, so every later stage of the seed inherits them. A stage process otherwise pays its imports before
doing any work (llm-foundry ~8 CPU-s for pretrain and again for export, ptls/Lightning ~6 for coles,
transformers for embed): on the tiny test pipeline that start was about half of a seed's wall time. For the
same reason this process ends without Python's teardown of those modules (~2 s of CPU each,
`core/cli.exit_without_teardown`; every stage process ends so too, `core/cli.end_stage_process`), and the
overrides are checked once here rather than composed again by every stage.

Why fork and not one process running the stages in turn: a stage owns its process (Hydra's global state, file
descriptors 1 and 2 pointed at its log file, signal handlers, threads, torch's settings) and ends with an exit
status; a child keeps that, and a crash in one stage cannot leave state behind for the next. The parent never
runs torch, never initialises CUDA or an OpenMP pool and starts no thread, so forking it is safe. Elsewhere
(macOS: forking after Objective-C libraries are loaded aborts) and with `LLM4TRX_FORK=0`, and for the stages
that start several processes (NPROC > 1: Composer's launcher for pretrain, accelerate's for embed), stages are
started as fresh processes, as before.

Signals follow the shell's rules that scripts/run.sh had: SIGINT and SIGTERM meant for the running stage reach
it directly (a terminal's Ctrl-C and requeue.sh's `kill -- -PGID` signal the whole process group); this
process then stops after the stage instead of starting the next one, so a stage never receives a signal twice.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import subprocess
import sys
import time
from types import ModuleType
from typing import Sequence

from llm4trx.core import cli, registry
from llm4trx.core.cli import LABEL, exit_code, exit_without_teardown

# Stages that start several processes through a launcher when NPROC > 1 (never forked from here).
LAUNCHED = ("pretrain", "embed")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m llm4trx.core.stage_runner", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--stages", required=True, help="the stages to run, in order, separated by spaces")
    parser.add_argument("--up-to-date", default="", help="stages skipped without starting them")
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, after --")
    return parser.parse_args(argv)


def can_fork() -> bool:
    return sys.platform.startswith("linux") and os.environ.get("LLM4TRX_FORK", "1") != "0"


def preload(stage: str) -> ModuleType | None:
    """Import the stage's module and its PRELOAD libraries here, to be inherited by this stage and the later
    ones; None when that fails (the stage then starts afresh and reports the failure itself, as it would)."""
    try:
        module = importlib.import_module(f"llm4trx.{stage}")
        for name in getattr(module, "PRELOAD", ()):
            importlib.import_module(name)
    except Exception:  # noqa: BLE001 - the fresh process reports it with the stage's own error handling
        return None
    return module if callable(getattr(module, "main", None)) else None


@functools.cache
def composed(overrides: tuple[str, ...]):
    """The run's config, composed once per runner (only to judge shared stages; a failure is not cached)."""
    from llm4trx.core.config import compose

    return compose(list(overrides))


def finished_meanwhile(stage: str, overrides: list[str]) -> bool:
    """Whether a shared stage that was not among the leading up-to-date stages when this run started is up to date
    now: built by another process (another seed, run_multi_seed.sh's shared pass), or after a per-seed stage in
    the pipeline (baselines, after coles, is never "leading" while the seed's own stages are pending). Then it is
    skipped without starting its process. Judged as the stage judges itself (its config hash); on any doubt the
    stage starts and judges."""
    if registry.get(stage).scope != registry.SHARED:
        return False
    try:
        from llm4trx.core.stage import is_up_to_date

        return is_up_to_date(composed(tuple(overrides)), stage)
    except Exception:  # noqa: BLE001 - the stage's own process reports any problem
        return False


def fresh_command(stage: str, nproc: int, overrides: list[str]) -> list[str]:
    """A stage as a new process: Composer's or accelerate's launcher for NPROC > 1, else `python -m`."""
    bin_dir = os.path.dirname(sys.executable)
    if nproc > 1 and stage == "pretrain":
        return [os.path.join(bin_dir, "composer"), "-n", str(nproc), "-m", "llm4trx.pretrain", *overrides]
    if nproc > 1 and stage == "embed":
        # --multi_gpu also on a GPU-less machine: `--cpu --num_processes N` silently runs one process.
        launcher = [os.path.join(bin_dir, "accelerate"), "launch", "--multi_gpu", "--num_processes", str(nproc)]
        flags = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        return [*launcher, *flags, "-m", "llm4trx.embed", *overrides]
    return [sys.executable, "-m", f"llm4trx.{stage}", *overrides]


class Signals:
    """SIGINT/SIGTERM received while a stage runs: remembered, acted on once the stage has ended."""

    def __init__(self) -> None:
        self.received: int | None = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._remember)

    def _remember(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.received = signum


def arguments_check_here(overrides: list[str]) -> bool:
    """Run the stages' own check of the overrides (compose, validate, the log folder) once here, so that the
    stages forked from this process need not (a compose each); False when it fails: the stage then checks
    them itself and reports the error its usual way."""
    try:
        cli.check_arguments(overrides)
    except Exception:  # noqa: BLE001 - reported by the stage's own check
        return False
    return True


def shell_status(code: int) -> int:
    """A child's exit code as the shell reports it: 128 + N when signal N ended it (Python gives -N)."""
    return 128 - code if code < 0 else code


def run_forked(module: ModuleType, overrides: list[str], label: str, checked: bool = False) -> int:
    """The stage's entry point in a child process; its exit status (128 + N when killed by signal N)."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The child is the stage's process from here on: Python's default handlers (the stage installs its
        # own), the argv of `python -m llm4trx.<stage>`, and an interpreter exit (threads joined, atexit run)
        # with the stage's status when the entry point returns or raises SystemExit; anything else propagates
        # as in `python -m`.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [module.__file__, *overrides]
        os.environ[LABEL] = label
        if checked:
            cli.CHECKED_ARGUMENTS = tuple(overrides)
        try:
            module.main()
            code = 0
        except SystemExit as stop:
            code = exit_code(stop)
        exit_without_teardown(code)
    _, status = os.waitpid(pid, 0)  # retried by Python when a signal interrupts it (PEP 475)
    return shell_status(os.waitstatus_to_exitcode(status))


def run_fresh(command: list[str], label: str) -> int:
    return shell_status(subprocess.call(command, env={**os.environ, LABEL: label}))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    stages, up_to_date = args.stages.split(), set(args.up_to_date.split())
    signals = Signals()
    fork = can_fork()
    checked = fork and arguments_check_here(list(args.overrides))
    started, timings = time.monotonic(), []
    print(
        f"run.sh [seed {args.seed}]: {len(stages)} stages into {args.run_dir} (each stage prints its log file; "
        f"progress=false hides bars)",
        flush=True,
    )
    for i, stage in enumerate(stages, start=1):
        label = f"run.sh [seed {args.seed}] {i}/{len(stages)} {stage}"
        if stage in up_to_date or finished_meanwhile(stage, list(args.overrides)):
            print(f"{label}: up to date, skipped", flush=True)
            timings.append(f"{stage} skipped")
            continue
        t0 = time.monotonic()
        launched = args.nproc > 1 and stage in LAUNCHED
        module = preload(stage) if fork and not launched else None
        if signals.received is not None:  # Ctrl-C or SIGTERM while importing here: start nothing more
            return 128 + signals.received
        # The stage prints its own start line (with its log file) and end line (time and its main figure).
        if module is not None:
            code = run_forked(module, list(args.overrides), label, checked)
        else:
            code = run_fresh(fresh_command(stage, args.nproc, list(args.overrides)), label)
        if code != 0:
            print(
                f"run.sh: stage {stage} failed (exit {code}); fix the cause and rerun the same command to continue "
                f"from it",
                file=sys.stderr,
                flush=True,
            )
            return code
        if signals.received is not None:  # the stage finished anyway: stop before the next one
            return 128 + signals.received
        timings.append(f"{stage} {time.monotonic() - t0:.0f}s")
    print(f"run.sh [seed {args.seed}]: finished in {time.monotonic() - started:.0f} s ({', '.join(timings)})")
    if "validate" in stages:
        print(f"run.sh [seed {args.seed}]: results in {args.run_dir}/{registry.get('validate').folder}/")
    return 0


if __name__ == "__main__":
    exit_without_teardown(main())
