"""Typed views of the config handed to the libraries, built once by a stage from its composed config.

Library modules (data/, evaluation/, generation/, lm/, render/) take plain values or these small frozen
objects, never a raw `DictConfig`: a stage builds them from its config (`DatasetSpec.from_config(cfg.dataset)`)
and hands them on. The exceptions are the config translators lm/foundry_config.py and lm/hf_backend.py, whose job
is to map the composed config key by key onto llm-foundry's and transformers' own configs.

One section's model (its fields and their compose-time checks) is declared once, in core/schema.py; the names
below are those the libraries import. What is declared here combines sections: the validation protocol's, a
run's and fine-tuning's views.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from llm4trx.core.schema import (
    AugmentSpec,
    ColesSpec,
    DatasetSpec,
    FinetuneSpec,
    MixSpec,
    SamplingSpec,
    SplitsSpec,
    TextSpec,
    Validate,
)
from llm4trx.core.typed import Section, plain

# The section models the libraries import from here (declared in core/schema.py), and the views below.
__all__ = [
    "AugmentSpec",
    "ColesSpec",
    "DatasetSpec",
    "FinetuneRunSpec",
    "MixSpec",
    "RunSpec",
    "SamplingSpec",
    "SplitsSpec",
    "TextSpec",
    "ValidationSpec",
]


class ValidationSpec(Validate, kw_only=True):
    """What the validation protocol reads (evaluation/validation.py, for the validate and baselines stages): the
    `validate` section (LightGBM parameters and seed mode, threads, aggregates), the dataset's task, classes,
    metrics and categorical columns, the run's seed and progress switch."""

    task: str
    n_classes: int
    metrics: list[str]
    categorical: list[str]
    seed: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ValidationSpec:
        ds = cfg.dataset
        return cls(
            **Validate.values_of(cfg.validate),
            task=ds.task,
            n_classes=ds.n_classes,
            metrics=plain(ds.metrics),
            categorical=plain(ds.categorical),
            seed=cfg.seed,
            progress=cfg.progress,
        )


class RunSpec(Section):
    """What a run trains its model on (data/model_record.py: recorded by export, compared by embed when it
    applies another run's model): the run's name and seed, its text and tokenizer sections, its dataset.
    `RunSpec.from_config(cfg)` on the whole config (Section.from_config: the dataset from its subsection, text and
    tokenizer as plain dicts)."""

    experiment_name: str
    seed: int
    max_seq_len: int
    dataset: DatasetSpec
    text: dict[str, Any]
    tokenizer: dict[str, Any]


class FinetuneRunSpec(Section):
    """What fine-tuning reads (lm/supervised.py, lm/classifiers.py, lm/classifier_trainer.py): the `finetune`
    section, the dataset, the split protocol, the run's context length, seed and progress switch
    (`FinetuneRunSpec.from_config(cfg)` on the whole config)."""

    finetune: FinetuneSpec
    dataset: DatasetSpec
    splits: SplitsSpec
    max_seq_len: int
    seed: int
    progress: bool
