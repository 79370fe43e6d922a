"""One Hydra entry point per stage: `python -m llm4trx.<stage> key=value ...`.

What a stage prints on the console (everything else goes to the stage's log file, whose path it prints):
- one line when it starts (with the log file's path) and one when it ends (time and the figure that matters:
  events, loss and tokens/s, the headline metric...);
- its own warnings (`llm4trx.*` loggers) and progress bars (tqdm, Composer's; `progress=false` turns them off);
- an error as one line on stderr: exit status 2 for a condition the user can fix (config, data, a missing
  or unwritable path, no space left), 1 for anything else, with the traceback in the log file;
- an interruption (SIGINT, SIGTERM) as one line, exit status 128 + signal number, after the stage's temporary
  folder is removed (`atomic_dir`'s cleanup runs: the signal is raised as an exception).
- its end: with the stage's exit status, after its threads and atexit handlers, without Python's teardown of the
  imported modules (`end_stage_process`: slow, and able to abort a finished stage).

The overrides are validated before Hydra starts (`llm4trx.core.check.compose_checked`), so a single stage and
scripts/run.sh report a bad argument with the same line. Arguments starting with `-` (`-m`, `--cfg job`,
`--help`) go to Hydra unchanged. Library output (Composer, Lightning, PyTorch, transformers, warnings, C-level
writes to stdout/stderr) is sent to the log file by pointing file descriptors 1 and 2 at it.
"""

from __future__ import annotations

import atexit
import errno
import io
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from llm4trx.core.config import CONF_DIR
from llm4trx.core.errors import ConfigError, Llm4trxError
from llm4trx.core.schema import validate

log = logging.getLogger("llm4trx")

# The environment variable that gives a stage the label of its start and end lines (core/stage_runner.py sets it).
LABEL = "LLM4TRX_STAGE_LABEL"

# OSErrors a user fixes by changing a path, permissions or disk space; the hint says how.
USER_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device; free space or set paths.output_root to another disk",
    errno.EDQUOT: "disk quota exceeded; free space or set paths.output_root to another disk",
    errno.EACCES: "permission denied; choose a folder you can write (paths.output_root=...) or fix its permissions",
    errno.EPERM: "operation not permitted; choose a folder you can write (paths.output_root=...)",
    errno.EROFS: "read-only file system; set paths.output_root to a writable folder",
    errno.ENOENT: "no such file or folder; check the path in the config (dataset.raw_dir, paths.output_root, ...)",
    errno.ENOTDIR: "a part of the path is a file, not a folder; check the path in the config",
    errno.EISDIR: "a folder where a file was expected; check the path in the config",
}


class Interrupted(BaseException):
    """SIGTERM/SIGINT raised as an exception, so that `finally` blocks (temporary folders) run."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum, frame):  # noqa: ARG001 - signal handler signature
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM (scancel, SLURM's time limit, kill) and SIGINT (Ctrl-C) unwind the stack like an exception."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)


def user_message(err: BaseException, folder: Path | None = None) -> str | None:
    """The one line for a condition the user can fix, or None for an unexpected error. `folder`: the stage's
    output folder, named when the error carries no file name (pyarrow's write errors, for one)."""
    if isinstance(err, Llm4trxError):
        return str(err)
    if isinstance(err, OSError) and err.errno in USER_OS_ERRORS:
        where = err.filename if err.filename is not None else (f"writing {folder}" if folder is not None else "")
        if getattr(err, "filename2", None):
            where = f"{where} -> {err.filename2}"
        return f"{where}: {err.strerror or os.strerror(err.errno)}: {USER_OS_ERRORS[err.errno]}".lstrip(": ")
    return None


# ------------------------------------------------------------------------------------------ console


class _ToConsole(logging.Filter):
    """Console records: llm4trx's warnings and errors, and errors of any library (tracebacks stay in the file)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "file_only", False):
            return False
        ours = record.name.startswith("llm4trx") or record.name == "__main__"
        return record.levelno >= (logging.WARNING if ours else logging.ERROR)


class _ProgressRouter(io.TextIOBase):
    """sys.stderr while a stage runs: progress-bar refreshes (writes holding a carriage return, and the newline
    that closes a bar) go to the console when `progress` is on and the console is a terminal; everything else
    goes to the log file."""

    def __init__(self, log_stream, console, progress: bool):
        self.log_stream, self.console = log_stream, console
        self.progress = progress and console.isatty()
        self._in_bar = False

    def write(self, text: str) -> int:
        is_bar = self.progress and ("\r" in text or (self._in_bar and text == "\n"))
        target = self.console if is_bar else self.log_stream
        target.write(text)
        target.flush()
        self._in_bar = is_bar and text != "\n"
        return len(text)

    def flush(self) -> None:
        self.log_stream.flush()
        self.console.flush()

    def isatty(self) -> bool:  # tqdm and rich ask: bars only where the console is a terminal
        return self.progress

    def fileno(self) -> int:
        return self.log_stream.fileno()

    @property
    def encoding(self):
        return "utf-8"


class Console:
    """The terminal the stage was started from, kept while fds 1 and 2 point at the log file."""

    def __init__(self, log_file: Path | None, progress: bool):
        self.log_file = log_file
        self.out = sys.stdout
        self.err = sys.stderr
        self._saved: list[int] = []
        if log_file is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        # The console streams: duplicates of the original fds 1 and 2, line-buffered.
        self.out = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        self.err = open(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        self._saved = [os.dup(1), os.dup(2)]
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        log_stream = open(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = _ProgressRouter(log_stream, self.err, progress)
        logging.captureWarnings(True)  # warnings.warn -> the py.warnings logger -> the log file
        root = logging.getLogger()
        for handler in list(root.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                root.removeHandler(handler)  # Hydra's console handler: every library's INFO lines
        console = logging.StreamHandler(self.err)
        console.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        console.addFilter(_ToConsole())
        root.addHandler(console)

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def error(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()


def _log_file() -> Path | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return Path(hc.runtime.output_dir) / f"{hc.job.name}.log"
    except Exception:  # not under Hydra's job logging (tests calling the function directly)
        return None


def _output_folder(cfg: DictConfig, stage: str) -> Path | None:
    try:
        from llm4trx.core.stage import stage_dir

        return stage_dir(cfg, stage)
    except Exception:  # an unknown stage name or an unresolvable path: the message goes without it
        return None


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)


# ------------------------------------------------------------------------------------------ the end line


def figure(value: float) -> str:
    """A number for an end line: thousands separated from 100 on, else 4 significant digits."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.4g}"


# A stage's end line: (counts of its _SUCCESS.json, its seconds, its folder) -> the figure that matters.
SummaryLine = Callable[[dict, float, Path], str]


def summary(folder: Path, line: SummaryLine | None = None) -> str:
    """The figure that matters for a finished stage: its own `line` (declared with `stage_main(run, line)`) of
    the counts in its `_SUCCESS.json`, or (none declared) its first scalar counts."""
    from llm4trx.core.stage import read_success

    done = read_success(folder)
    c, seconds = done.get("counts", {}), float(done.get("seconds") or 0) or 1e-9
    if line is not None:
        return line(c, seconds, Path(folder))
    scalars = [
        f"{k} {figure(v) if isinstance(v, float) else v}"
        for k, v in c.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    ]
    return ", ".join(scalars[:4]) or str(folder)


# ------------------------------------------------------------------------------------------ the entry point


def _stage_name(run: Callable) -> str:
    module = run.__module__
    if module == "__main__":  # `python -m llm4trx.<stage>`
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    return module.rsplit(".", 1)[-1]


# Overrides already checked by check_arguments in this process's parent (core/stage_runner.py, which forks the
# stages of one seed): a forked stage given exactly these does not compose and check them again.
CHECKED_ARGUMENTS: tuple[str, ...] | None = None


def check_arguments(args: list[str]) -> None:
    """Validate the overrides as scripts/run.sh does and check that the log folder can be written; raise
    ConfigError (or a user OSError) with the same one line. Arguments with flags go to Hydra unchanged."""
    if any(arg.startswith("-") for arg in args):
        return
    from llm4trx.core.check import compose_checked

    cfg = compose_checked([a for a in args if not a.startswith("hydra.")], check_launcher_overrides=False)
    root = Path(cfg.paths.experiment_dir)
    try:
        (root / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the output folder {root / 'logs'} ({err.strerror}); set "
            f"paths.output_root to a folder you can write"
        ) from None


def exit_code(stop: SystemExit) -> int:
    """The exit status Python gives `raise SystemExit(stop.code)` (a message is printed and counts as 1)."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def exit_without_teardown(code: int) -> None:
    """End this process as a normal interpreter exit would, minus the teardown of its modules: stop and join
    its non-daemon threads, run the atexit handlers (logging's flush and close among them), flush stdout and
    stderr, then os._exit. With torch, llm-foundry, Lightning and scikit-learn imported, Python's teardown of
    them takes ~2 s of CPU (measured: 2.0 s vs 0.08 s for the same imports), which every stage process and the
    stage runner would pay at their end; the files a stage writes are closed by the stage, not by teardown."""
    # What Py_FinalizeEx does before the teardown, in its order: threading's exit hooks (they tell the pools'
    # workers, e.g. concurrent.futures', to stop) and the join of non-daemon threads, then the atexit handlers.
    threading._shutdown()  # noqa: SLF001
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: as Python's exit, nothing more to do
            pass
    os._exit(code)


def end_stage_process(code: int) -> None:
    """End a stage's process with `code` and without the interpreter's teardown, however it was started
    (`python -m llm4trx.<stage>`, a launcher's rank, or forked by core/stage_runner.py).

    The teardown is not only slow (~2 s of CPU with torch, llm-foundry, Lightning and scikit-learn imported) but
    can abort a process whose work is done: pyarrow's thread pools at exit end it with "terminate called without
    an active exception" (exit 134; apache/arrow#34314, open), seen here in 1 of 15 runs of a script that only
    read parquet files, and once in a rank of the two-node resume test. A rank of a multi-rank job that finished
    (code 0) first meets the others at a last barrier, so that none exits while another still talks to it (rank 0
    hosts the store); after a failure it exits at once and its launcher stops the others."""
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.barrier()
    exit_without_teardown(code)


def stage_main(run: Callable[[DictConfig], Any], summary_line: SummaryLine | None = None) -> Callable[[], None]:
    """Wrap `run(cfg)` as a Hydra app with the console described in this module's docstring; `summary_line`:
    the stage's end-of-stage figure (see `summary`)."""
    stage = _stage_name(run)

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        log_file = _log_file()
        label = os.environ.get(LABEL, stage)
        quiet = _rank() != 0  # other ranks of a distributed job: their log file only
        console = Console(log_file, bool(cfg.get("progress", True)) and not quiet)
        install_signal_handlers()
        started = time.time()
        if not quiet:
            console.say(f"{label}: started {time.strftime('%H:%M:%S')} (log: {log_file})")
        try:
            try:
                validate(cfg)  # as compose does; Hydra composed this one (also under -m, --cfg)
                folder = run(cfg)
            except SystemExit as err:
                # Composer installs its own SIGTERM/SIGINT handler: sys.exit(128 + signal), which unwinds too.
                if err.code in (128 + signal.SIGTERM, 128 + signal.SIGINT):
                    raise Interrupted(int(err.code) - 128) from None
                raise
        except Interrupted as err:
            name = signal.Signals(err.signum).name
            log.error("%s: interrupted by %s", stage, name, extra={"file_only": True})
            console.error(
                f"{label}: interrupted by {name} after {time.time() - started:.0f} s; temporary files "
                f"removed, finished stages kept: rerun the same command to continue"
            )
            sys.exit(128 + err.signum)
        except Exception as err:
            message = user_message(err, _output_folder(cfg, stage))
            if message is not None:
                log.error("%s", message, exc_info=not isinstance(err, Llm4trxError), extra={"file_only": True})
                console.error(f"error: {message}")
                sys.exit(2)
            log.error("%s failed", stage, exc_info=True, extra={"file_only": True})
            first = (str(err).splitlines() or [""])[0][:300]
            console.error(
                f"error: {stage} failed: {type(err).__name__}: {first} (unexpected: the traceback is in {log_file})"
            )
            sys.exit(1)
        if not quiet:
            try:
                from llm4trx.core.stage import FOUND_UP_TO_DATE, SUCCESS_FILE

                line = summary(Path(folder), summary_line)
                built_now = stage not in FOUND_UP_TO_DATE and (Path(folder) / SUCCESS_FILE).stat().st_mtime >= started
            except Exception:  # a summary must never fail a finished stage
                line, built_now = str(folder), True
            state = f"done in {time.time() - started:.1f} s" if built_now else "up to date, skipped"
            console.say(f"{label}: {state}: {line}")

    def _entry() -> None:
        args = sys.argv[1:]
        try:
            if tuple(args) != CHECKED_ARGUMENTS:
                check_arguments(args)
        except Exception as err:
            message = user_message(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)
        # Hydra names the job (and so the log folder logs/<job>/) after the file holding the decorated
        # function, which is this one for every stage; name it after the stage instead.
        if not any(arg.startswith("hydra.job.name=") for arg in args):
            sys.argv.append(f"hydra.job.name={stage}")
        try:
            _main()
        except SystemExit as stop:
            end_stage_process(exit_code(stop))
        end_stage_process(0)

    return _entry
