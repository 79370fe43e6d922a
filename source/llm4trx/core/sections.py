"""Typed views of config sections, built once by a stage from its composed config and handed to the libraries.

Library modules (data/, evaluation/, generation/, lm/, render/) take plain values or these small frozen
objects, never a raw `DictConfig`: a stage calls `DatasetSpec.from_config(cfg.dataset)` once at its entry.
Fields are named as the config keys and carry no defaults of their own beyond "absent" (None): the defaults
stay in conf/*.yaml, the declared choices and ranges in core/schema.py. Nested sections (`dataset.columns`,
`dataset.download`, ...) become plain dicts and lists, resolved.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def _plain(value: Any) -> Any:
    """A resolved config value as plain Python (dicts and lists); a missing `???` nested value stays '???'."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, throw_on_missing=False)
    return value


def _is_section(t) -> bool:
    return isinstance(t, type) and issubclass(t, Section)


class Section:
    """`from_config(node)`: the dataclass's fields read from a config section (absent or `???` keys: default); a
    field typed as another Section (or None) is read from the subsection the same way."""

    @classmethod
    def values_of(cls, node: DictConfig) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if not f.init or f.name not in node or OmegaConf.is_missing(node, f.name):
                continue
            value = node[f.name]
            inner = [t for t in (hints[f.name], *typing.get_args(hints[f.name])) if _is_section(t)]
            values[f.name] = inner[0].from_config(value) if inner and isinstance(value, DictConfig) else _plain(value)
        return values

    @classmethod
    def from_config(cls, node: DictConfig):
        return cls(**cls.values_of(node))


@dataclass(frozen=True)
class DatasetSpec(Section):
    """The `dataset` section (conf/dataset/*.yaml): raw files, their loader and the canonical contract."""

    name: str | None = None
    loader: str | None = None
    raw_dir: str | None = None
    generator: str | None = None  # synthetic: prepare generates the raw files first
    # the synthetic generator's parameters
    schema: str | None = None
    n_clients: int | None = None
    seed: int | None = None
    min_events: int | None = None
    max_events: int | None = None
    label_noise: float | None = None
    unlabeled_fraction: float | None = None
    signals: dict[str, float] | None = None
    # the canonical contract
    id_column: str | None = None
    categorical: list[str] = field(default_factory=list)
    mcc_names: str | None = None
    task: str | None = None
    n_classes: int | None = None
    metrics: list[str] = field(default_factory=list)
    time_origin: str | None = None
    drop_duplicates: bool = False
    block_bytes: int | None = None
    download: dict[str, Any] | None = None  # the download stage's source (data/fetch.py)
    # the generic loader's column mapping (conf/dataset/custom.yaml)
    transactions: list[str] = field(default_factory=list)
    columns: dict[str, Any] | None = None
    time_format: str | None = None
    targets: dict[str, Any] | None = None
    # keys left `???` (OmegaConf.missing_keys): data.loaders.specs names them before reading anything
    missing: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, node: DictConfig) -> DatasetSpec:
        return cls(**cls.values_of(node), missing=tuple(sorted(OmegaConf.missing_keys(node))))


@dataclass(frozen=True)
class SplitsSpec(Section):
    """The `splits` section (conf/config.yaml): the pytorch-lifestream split protocol (data/splits.py)."""

    test_fraction: float
    n_folds: int
    random_state: int
    val_fraction: float


@dataclass(frozen=True)
class ValidationSpec:
    """What the validation protocol reads (evaluation/validation.py, for the validate and baselines stages): the
    `validate` section's LightGBM parameters, threads and aggregates, the dataset's task, classes, metrics and
    categorical columns, the run's seed and progress switch."""

    task: str
    n_classes: int
    metrics: list[str]
    categorical: list[str]
    lightgbm: dict[str, Any]  # validate.lightgbm: {binary, multiclass, common}
    lightgbm_seed: str  # validate.lightgbm_seed (fixed | run)
    n_jobs: int | None  # validate.n_jobs (null: the threads this process was given)
    aggregates: dict[str, Any]  # validate.aggregates: numeric, categorical, sizes
    seed: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ValidationSpec:
        v, ds = cfg.validate, cfg.dataset
        return cls(
            task=ds.task,
            n_classes=ds.n_classes,
            metrics=_plain(ds.metrics),
            categorical=_plain(ds.categorical),
            lightgbm=_plain(v.lightgbm),
            lightgbm_seed=v.get("lightgbm_seed", "fixed"),
            n_jobs=v.get("n_jobs"),
            aggregates=_plain(v.get("aggregates")),
            seed=cfg.seed,
            progress=cfg.progress,
        )


@dataclass(frozen=True)
class RunSpec:
    """What a run trains its model on (data/model_record.py: recorded by export, compared by embed when it
    applies another run's model): the run's name and seed, its text and tokenizer sections, its dataset."""

    experiment_name: str
    seed: int
    max_seq_len: int
    dataset: DatasetSpec
    text: dict[str, Any]
    tokenizer: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: DictConfig) -> RunSpec:
        return cls(
            experiment_name=cfg.experiment_name,
            seed=cfg.seed,
            max_seq_len=cfg.max_seq_len,
            dataset=DatasetSpec.from_config(cfg.dataset),
            text=_plain(cfg.text),
            tokenizer=_plain(cfg.tokenizer),
        )


@dataclass(frozen=True)
class SamplingSpec(Section):
    """augment.sampling: per request, n samples of at most max_tokens tokens."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    n: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class VllmSpec(Section):
    """augment.vllm (conf/augment/vllm.yaml): the vLLM engine's settings."""

    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None


@dataclass(frozen=True)
class MixSpec(Section):
    """augment.mix: which augmented texts the text stage adds to the train split (generation/mix.py)."""

    sources: list[str] | None = None
    prompts: list[str] | None = None
    fraction: float | None = None
    with_base: bool | None = None
    seed: int | None = None


@dataclass(frozen=True)
class AugmentSpec(Section):
    """The `augment` section (conf/augment/*.yaml): generator, sampling, prompts (generation/)."""

    name: str | None = None
    backend: str | None = None
    generator: str | None = None
    dtype: str | None = None
    cpu_threads: int | None = None
    clients: dict[str, Any] | None = None
    sampling: SamplingSpec | None = None
    batch_size: int | None = None
    drop_empty: bool | None = None
    drop_truncated: bool | None = None
    system: str | None = None
    transactions_format: str | None = None
    use_chat_template: Any = None
    user_template: str | None = None
    formats: dict[str, str] | None = None
    analysis: dict[str, str] | None = None
    prompts: dict[str, Any] | None = None
    use: list[str] | None = None
    mix: MixSpec | None = None
    vllm: VllmSpec | None = None
