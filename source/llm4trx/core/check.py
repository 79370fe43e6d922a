"""Compose and validate the config once, before any stage runs; print what the pipeline scripts need.

    python -m llm4trx.core.check [overrides...]            # validates; prints the run directory
    python -m llm4trx.core.check --shell [overrides...]    # validates; prints shell assignments for scripts/run.sh

A bad argument (unknown experiment or config group option, unknown key, unparsable override, non-integer seed,
SLURM asked for where there is none) is reported as one line on stderr with how to fix it, exit status 2.
`--shell` prints RUN_DIR, SEEDS, NPROC, STAGES (the pipeline in order) and UP_TO_DATE (the stages whose
_SUCCESS.json matches this config, so scripts skip them without starting a process).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from typing import Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, Llm4trxError, StageInputMissing
from llm4trx.core import registry
from llm4trx.core.registry import pipeline
from llm4trx.core.stage import SUCCESS_FILE, is_finished, is_up_to_date, stage_dir


def compose_checked(overrides: Sequence[str], check_launcher_overrides: bool = True) -> DictConfig:
    """`compose(overrides)`, fully resolved once, with Hydra's and OmegaConf's errors turned into ConfigError.
    The single-stage entry points (core/cli.py) call it too, without the pipeline scripts' launcher check."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    for override in overrides:
        if override.startswith("-"):
            raise ConfigError(
                f"unknown option {override!r}: arguments are Hydra overrides key=value (e.g. experiment=smoke seed=3)"
            )
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parsed = parser.parse_overrides([override])[0]
        except OverrideParseException as err:
            first = str(err).splitlines()[0]
            raise ConfigError(f"cannot parse override {override!r} ({first}); the form is key=value") from None
        if parsed.is_sweep_override():
            raise ConfigError(
                f"override {override!r} is a sweep: write a list as key=[a,b], a string with commas as "
                f"key='a,b'; several seeds: bash scripts/run_multi_seed.sh seeds=[1,2,3]"
            )
    if check_launcher_overrides:
        check_launcher(overrides)
    try:
        cfg = compose(overrides)
    except MissingConfigException as err:
        group, _, name = (err.missing_cfg_file or "").rpartition("/")
        options = ", ".join(err.options or []) or "none"
        where = f"hydra's {group}" if group.startswith("hydra/") else f"conf/{group}/"
        raise ConfigError(f"unknown {group} {name!r}: no such config in {where}; choose one of: {options}") from None
    except ConfigCompositionException as err:
        raise ConfigError(composition_message(str(err))) from None
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        first = str(err).splitlines()[0]
        raise ConfigError(f"config value {key!r} cannot be resolved: {first}; give it on the command line") from None
    check_seeds(cfg)
    return cfg


def composition_message(message: str) -> str:
    first = message.splitlines()[0]
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        hint = message.splitlines()[-1].replace("To append to your config use ", "")
        if "." not in key and "/" not in key:
            return f"unknown config group or key {key!r}: check the spelling (groups are the folders of conf/)"
        return (
            f"unknown config key {key!r}: check the spelling (python -m llm4trx.prepare --cfg job prints the "
            f"composed config), or add a new key with {hint}"
        )
    return first


def check_seeds(cfg: DictConfig) -> None:
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not is_int(cfg.seed):
        raise ConfigError(f"seed={cfg.seed!r} is not an integer; give one, e.g. seed=42")
    seeds = cfg.get("seeds")
    if seeds is None:
        return
    if not OmegaConf.is_list(seeds) or not seeds:
        raise ConfigError(f"seeds={seeds!r} is not a list of integers; give one, e.g. seeds=[12,21,42]")
    bad = [seed for seed in seeds if not is_int(seed)]
    if bad:
        raise ConfigError(
            f'seeds: {", ".join(map(repr, bad))} not an integer; give integers, e.g. seeds=[12,21,42] or SEEDS="12 21 42"'
        )


def check_launcher(overrides: Sequence[str]) -> None:
    """The pipeline scripts run stages on this machine; SLURM is reached through sbatch or a stage's -m sweep."""
    asked = [o for o in overrides if o.startswith(("hydra/launcher=", "hydra.launcher."))]
    if not asked:
        return
    if shutil.which("sbatch") is None:
        raise ConfigError(
            f"{asked[0]}: SLURM is not available on this machine (no `sbatch` on PATH); drop the hydra/launcher "
            f"override to run here, or run on a SLURM login node"
        )
    raise ConfigError(
        f"{asked[0]}: the pipeline scripts run their stages in this job; to run the pipeline under SLURM submit "
        f"it: bash scripts/slurm/submit.sh scripts/slurm/pipeline.sbatch [overrides]"
    )


def requested_stages(cfg: DictConfig, names: str | None) -> list[str]:
    """The stages to run: all of the pipeline, or those named, in pipeline order, once their inputs exist.

    `names`: stage names and ranges separated by spaces or commas; a range `a..b` includes both ends, `..b`
    starts at the beginning and `a..` runs to the end (e.g. "..shards", "export..").
    """
    order = pipeline(cfg)
    if not names:
        return order

    def position(name: str, default: int) -> int:
        if not name:
            return default
        if name not in order:
            raise ConfigError(f"STAGES: unknown stage {name!r} for this config; the pipeline is: {' '.join(order)}")
        return order.index(name)

    wanted: set[str] = set()
    for token in names.replace(",", " ").split():
        start, dots, end = token.partition("..")
        first = position(start, 0)
        last = position(end, len(order) - 1) if dots else first
        wanted.update(order[first : last + 1])
    if not wanted:
        raise ConfigError(f"STAGES={names!r} names no stage; the pipeline is: {' '.join(order)}")
    first = min(order.index(name) for name in wanted)
    # What the wanted stages read, directly or through the stages they read (e.g. baselines: prepare only), must
    # have finished; the stages between that they do not read need not have.
    needed, pending = set(), [i for name in wanted for i in registry.inputs_of(cfg, name)]
    while pending:
        stage = pending.pop()
        if stage not in needed and stage not in wanted:
            needed.add(stage)
            pending.extend(registry.inputs_of(cfg, stage))
    for before in (stage for stage in order if stage in needed):
        if not is_finished(cfg, before):
            missing = (
                f"files missing in {stage_dir(cfg, before)}"
                if registry.get(before).done is not None
                else f"no {stage_dir(cfg, before) / SUCCESS_FILE}"
            )
            raise StageInputMissing(
                f"stage {order[first]!r} needs {before!r}, which has not finished for this run "
                f"({missing}); run the stages before it first: "
                f"STAGES=..{order[first - 1]} bash scripts/run.sh <the same overrides>"
            )
    return [stage for stage in order if stage in wanted]


def process_count() -> int:
    """NPROC from the environment, else the visible GPUs, else 1 (CPU runs one process)."""
    if os.environ.get("NPROC"):
        value = os.environ["NPROC"]
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"NPROC={value!r} is not a positive integer (processes for pretraining and embedding)")
        return int(value)
    if shutil.which("nvidia-smi") is None:  # no driver: skip importing torch, CPU runs one process
        return 1
    import torch

    return max(torch.cuda.device_count(), 1)


def parallel_seeds(cfg: DictConfig) -> int:
    return int(cfg.get("parallel_seeds", 1))  # a positive integer: core/schema.py


def shell_assignments(cfg: DictConfig) -> dict[str, str]:
    stages = requested_stages(cfg, os.environ.get("STAGES"))
    seeds = cfg.get("seeds") or [cfg.seed]
    shared = [s for s in stages if registry.get(s).scope in (registry.SHARED, registry.RAW)]
    memo: dict[str, bool] = {}
    return {
        "EXPERIMENT_DIR": str(cfg.paths.experiment_dir),
        "RUN_DIR": str(cfg.paths.run_dir),
        "REPORT_DIR": str(cfg.report.dir),
        "SEED": str(cfg.seed),
        "SEEDS": " ".join(str(seed) for seed in seeds),
        "NPROC": str(process_count()),
        "STAGES": " ".join(stages),
        "SHARED_STAGES": " ".join(shared),
        # run_multi_seed.sh builds the shared stages once before starting seeds side by side, when one must be built.
        "SHARED_PENDING": " ".join(s for s in shared if must_build(cfg, s, memo)),
        "PARALLEL_SEEDS": str(parallel_seeds(cfg)),
        "UP_TO_DATE": " ".join(leading_up_to_date(cfg, stages)),
    }


def must_build(cfg: DictConfig, stage: str, memo: dict[str, bool] | None = None) -> bool:
    """Whether `stage` will be (re)built: it is not up to date, or a stage it reads (directly or not) will be.
    `memo`: answers already found for `cfg` (shared stages read the same inputs: each is judged once)."""
    memo = {} if memo is None else memo
    if stage not in memo:
        inputs = registry.inputs_of(cfg, stage)
        memo[stage] = not is_up_to_date(cfg, stage) or any(must_build(cfg, i, memo) for i in inputs)
    return memo[stage]


def leading_up_to_date(cfg: DictConfig, stages: list[str]) -> list[str]:
    """The stages that can be skipped: those up to date before the first one that must run (a rebuilt stage
    changes the inputs of the stages after it, which then judge for themselves when they run)."""
    done = []
    for stage in stages:
        if not is_up_to_date(cfg, stage):
            break
        done.append(stage)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    shell = args[:1] == ["--shell"]
    overrides = args[1:] if shell else args
    try:
        cfg = compose_checked(overrides)
        if shell:
            for key, value in shell_assignments(cfg).items():
                print(f"{key}={shlex.quote(value)}")
        else:
            print(f"config ok: run directory {cfg.paths.run_dir}")
    except Llm4trxError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
