"""The choice and range checks of the config, declared once per config group and checked when it is composed.

`validate(cfg)` runs in `core.config.compose` (tests, notebooks, `core.check`, scripts/run.sh) and in every
stage's Hydra entry point, so a misspelt value stops before any stage starts, with one line naming the key:

    embed.pooling='max': should be 'mean' or 'last'
    augment.clients.fraction=0: should be greater than 0

The defaults stay in conf/*.yaml; a field here only says what a value may be. A key absent from the composed
config, or one that is missing (`???`) or does not resolve, is not checked here (`core.check.compose_checked`
reports those). Unknown keys are accepted as before (a new key needs no edit here), except in groups that were
closed already (`dataset.signals`). Checks that relate several keys, or the config to data, files or the
machine, stay in the code that needs them.

Choices that the code implements in a table of its own (text formats, loaders, metrics, dtypes, poolings,
backends, ...) are spelt here too; tests/test_schema.py checks that both lists agree.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from omegaconf import DictConfig
from pydantic import Field

from llm4trx.core.typed import Closed, Group, check_config

# Choice sets that only the config uses (the code branches on them, no table of its own).
ENGINES = ("embedded", "spark")
TOKENIZER_KINDS = ("domain_bpe", "fields", "pretrained")
TRACKERS = ("wandb", "mlflow", "tensorboard")
SEED_MODES = ("fixed", "run")  # validate.lightgbm_seed
FINETUNE_KINDS = ("head", "verbalizer")
FINETUNE_PRECISIONS = ("fp32", "bf16")
FINETUNE_DEVICES = ("auto", "cpu", "cuda")
UNKNOWN_WORDS = ("vocabulary", "error")  # finetune.verbalizer.unknown_words
# Mirrors of tables in the code (tests/test_schema.py: the same names as there).
FORMATS = ("compact", "fields", "flat", "grouped_mcc", "html", "json", "markdown", "yaml")  # render.formats
CALENDAR = ("dow", "dom", "month", "end")  # render.formats.CALENDAR
LOADERS = ("age_pred", "gender", "generic", "rosbank")  # data.loaders.LOADERS
SCHEMAS = ("rosbank", "age_pred", "gender")  # data.synthetic.SCHEMAS
METRICS = ("accuracy", "auroc")  # evaluation.protocol.METRICS
TIME_FEATURES = ("day_gap", "hour", "weekday", "day_index")  # data.sequences.TIME_FEATURES
POOLINGS = ("mean", "last")  # lm.pooling.POOLINGS
DTYPES = ("float32", "bfloat16", "float16")  # lm.dtypes.DTYPES
FEATURE_SETS = ("llm", "aggregates", "coles", "random", "oracle")  # validate.BASE_SETS
AUGMENT_BACKENDS = ("hf", "vllm")  # generation.backends.BACKENDS

Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)


class Shards(Group):
    samples_per_part: Positive = None


class Splits(Group):
    test_fraction: Fraction = None
    val_fraction: Fraction = None
    n_folds: Annotated[int, Field(ge=2)] = None


class Signals(Closed):  # data.synthetic.SIGNALS + EXTRA_SIGNALS: weights of the target's signals
    mcc_mix: float = None
    amount: float = None
    trend: float = None
    order: float = None
    periodic: float = None
    regime: float = None
    burst: float = None
    gaps: float = None


class Dataset(Group):
    schema_: Literal[SCHEMAS] = Field(None, alias="schema")  # synthetic: the raw schema it writes
    loader: Literal[LOADERS] = None
    n_clients: Annotated[int, Field(ge=10)] = None  # synthetic
    min_events: Annotated[int, Field(ge=2)] = None  # synthetic (<= max_events: checked by the generator)
    signals: Signals = None
    metrics: list[Literal[METRICS]] = None


class Text(Group):
    format: Literal[FORMATS] = None
    max_tokens: Optional[Annotated[int, Field(gt=2)]] = Field(None, description="bos + eos + text, or null")
    chunk_events: Optional[Positive] = None
    calendar: list[Literal[CALENDAR]] = None


class Tokenizer(Group):
    kind: Literal[TOKENIZER_KINDS] = None


class Embed(Group):
    pooling: Literal[POOLINGS] = None
    padding_side: Literal["left", "right"] = None
    dtype: Literal[DTYPES] = None
    layer_slice: Annotated[list[Optional[int]], Field(min_length=2, max_length=2)] = Field(
        None, description="[start, stop], null for an open end"
    )
    batch_size: Positive = None
    segments: Positive = None


class Coles(Group):
    encoder_type: Literal["gru", "lstm"] = None
    time_features: list[Literal[TIME_FEATURES]] = None
    time_numeric: list[Literal[TIME_FEATURES]] = None


class Validate(Group):
    feature_sets: list[Literal[FEATURE_SETS]] = None
    lightgbm_seed: Literal[SEED_MODES] = Field(
        None, description="fixed: lightgbm.common.random_state, as ptls-experiments; run: the run's seed"
    )


class Contrastive(Group):
    """trainer.contrastive (lm/contrastive.py); min_fraction <= max_fraction is checked there."""

    weight: Annotated[float, Field(ge=0)] = Field(None, description="0: off")
    views: Annotated[int, Field(ge=2)] = Field(None, description="a positive pair needs two")
    min_fraction: Annotated[float, Field(gt=0, le=1)] = None
    max_fraction: Annotated[float, Field(gt=0, le=1)] = None
    temperature: Annotated[float, Field(gt=0)] = None


class Trainer(Group):
    backend: Literal["foundry", "hf"] = None
    device: Literal["cpu", "gpu"] = None
    loggers: list[Literal[TRACKERS]] = None
    bucket_window: Annotated[int, Field(strict=True, ge=1)] = Field(
        None, description="batches sorted by length together"
    )
    packing: bool = Field(None, description="a batch's clients packed into rows (lm/packing.py)")
    length_bucketing: bool = None
    contrastive: Contrastive = None


class Sampling(Group):
    n: Positive = None
    max_tokens: Positive = None


class AugmentClients(Group):
    fraction: Annotated[float, Field(gt=0, le=1)] = None


class Mix(Group):
    fraction: Annotated[float, Field(ge=0, le=1)] = None


class Augment(Group):
    backend: Literal[AUGMENT_BACKENDS] = None
    dtype: Literal[("auto", *DTYPES)] = None
    use_chat_template: Literal["auto", True, False, "true", "false"] = None
    transactions_format: Literal[FORMATS] = None
    batch_size: Positive = None
    clients: AugmentClients = None
    sampling: Sampling = None
    mix: Mix = None


class FinetuneMethod(Group):
    kind: Literal[FINETUNE_KINDS] = None


class FinetuneTraining(Group):
    precision: Literal[FINETUNE_PRECISIONS] = None
    device: Literal[FINETUNE_DEVICES] = None
    max_steps: Positive = None
    batch_size: Positive = None
    micro_batch_size: Positive = None
    eval_batch_size: Positive = None
    eval_interval: Positive = None
    patience: Positive = None


class Verbalizer(Group):
    unknown_words: Literal[UNKNOWN_WORDS] = None


class Finetune(Group):
    runs: Annotated[list[str], Field(min_length=1)] = Field(None, description="keys of finetune.methods")
    methods: dict[str, FinetuneMethod] = None
    pooling: Literal[POOLINGS] = None
    training: FinetuneTraining = None
    verbalizer: Verbalizer = None


class Engine(Group):
    name: Literal[ENGINES] = None


class Config(Group):
    """The root config (conf/config.yaml) and its groups."""

    parallel_seeds: Annotated[int, Field(strict=True, ge=1)] = Field(None, description="seeds run at once")
    max_seq_len: Annotated[int, Field(ge=3)] = Field(None, description="bos + a token + eos")
    shards: Shards = None
    splits: Splits = None
    dataset: Dataset = None
    text: Text = None
    tokenizer: Tokenizer = None
    embed: Embed = None
    coles: Coles = None
    validate_: Validate = Field(None, alias="validate")
    trainer: Trainer = None
    augment: Augment = None
    finetune: Finetune = None
    engine: Engine = None


def validate(cfg: DictConfig) -> Config:
    """Check the declared keys of a composed config; the first bad value is a ConfigError naming its key."""
    return check_config(Config, cfg)
