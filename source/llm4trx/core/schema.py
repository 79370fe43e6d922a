"""The config's sections, typed once: one model per config group with the fields the code reads and the choice and
range checks made when the config is composed (the machinery: core/typed.py).

A section the code reads is a `Section` (a frozen dataclass): a stage builds it from its composed config
(`DatasetSpec.from_config(cfg.dataset)`) and hands it to the libraries, which never see a raw `DictConfig`
(core/sections.py adds the views that combine sections). A `Group` (pydantic) holds keys that are only checked.
`validate(cfg)` runs in `core.config.compose` (tests, notebooks, `core.check`, scripts/run.sh) and in every
stage's Hydra entry point, so a misspelt value stops before any stage starts, with one line naming the key:

    embed.pooling='median': should be 'mean', 'last', 'max' or 'mean_max'
    augment.clients.fraction=0: should be greater than 0

The defaults stay in conf/*.yaml: a field's annotation says what a value may be, its default only what the code
gets where the key is absent (None, or what it assumed before). Only a Section's `check()` fields, and every field
of a Group (read from the config by the stages and config translators, or as a plain dict), are checked. A
key absent from the composed config, or one that is missing (`???`) or does not resolve, is not checked here
(`core.check.compose_checked` reports those). Unknown keys are accepted (a new key needs no edit here), except in
a `Closed` group (`dataset.signals`). Checks that relate several keys, or the config to data, files or the
machine, stay in the code that needs them.

Choices that the code implements in a table of its own (text formats, loaders, metrics, dtypes, poolings,
backends, ...) are spelt here too; tests/test_schema.py checks that both lists agree.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal, Optional

from omegaconf import DictConfig, OmegaConf
from pydantic import Field

from llm4trx.core.typed import Closed, Group, Section, check, check_config, checks_of

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
CALENDAR = ("dow", "dom", "month", "end", "same")  # render.formats.CALENDAR
LOADERS = ("age_pred", "gender", "generic", "rosbank")  # data.loaders.LOADERS
SCHEMAS = ("rosbank", "age_pred", "gender")  # data.synthetic.SCHEMAS
METRICS = ("accuracy", "auroc")  # evaluation.protocol.METRICS
HEADS = ("lightgbm", "logistic")  # evaluation.protocol.HEADS
TIME_FEATURES = ("day_gap", "hour", "weekday", "day_index")  # data.sequences.TIME_FEATURES
POOLINGS = ("mean", "last", "max", "mean_max")  # lm.pooling.POOLINGS
DTYPES = ("float32", "bfloat16", "float16")  # lm.dtypes.DTYPES
FEATURE_SETS = ("llm", "aggregates", "coles", "random", "oracle")  # validate.BASE_SETS
AUGMENT_BACKENDS = ("hf", "vllm")  # generation.backends.BACKENDS

Positive = Annotated[int, Field(ge=1)]
Fraction = Annotated[float, Field(ge=0, lt=1)]  # [0, 1)


# Keys only checked: the stages and the config translators read them from the config (or, AugmentClients and
# Signals, the code gets them as plain dicts).


class Shards(Group):
    samples_per_part: Positive = None


class Bootstrap(Group):  # report.bootstrap (evaluation/bootstrap.py)
    n: Positive = None
    level: Annotated[float, Field(gt=0, lt=1)] = None
    seeds: Literal["resample", "fixed"] = None


class Report(Group):
    bootstrap: Bootstrap = None


class Signals(Closed):  # data.synthetic.SIGNALS + EXTRA_SIGNALS: weights of the target's signals
    mcc_mix: float = None
    amount: float = None
    trend: float = None
    order: float = None
    periodic: float = None
    regime: float = None
    burst: float = None
    gaps: float = None


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


class AugmentClients(Group):  # read by the augment stage as a plain dict
    fraction: Annotated[float, Field(gt=0, le=1)] = None


class Engine(Group):
    name: Literal[ENGINES] = None


# The sections the code reads: a stage builds them from its config (XSpec.from_config(cfg.<section>)).


class SplitsSpec(Section):
    """The `splits` section (conf/config.yaml): the pytorch-lifestream split protocol (data/splits.py)."""

    test_fraction: Fraction = check(...)
    val_fraction: Fraction = check(...)
    n_folds: int = check(..., ge=2)
    random_state: int


class DatasetSpec(Section):
    """The `dataset` section (conf/dataset/*.yaml): raw files, their loader and the canonical contract."""

    name: str | None = None
    raw_dir: str | None = None
    generator: str | None = None  # synthetic: prepare generates the raw files first
    # the synthetic generator's parameters (min_events <= max_events: checked by the generator)
    schema: Literal[SCHEMAS] = check()  # the raw schema it writes
    loader: Literal[LOADERS] = check()
    n_clients: int = check(ge=10)
    seed: int | None = None
    min_events: int = check(ge=2)
    max_events: int | None = None
    label_noise: float | None = None
    unlabeled_fraction: float | None = None
    signals: dict[str, float] | None = check(group=Signals)
    # the canonical contract
    id_column: str | None = None
    categorical: list[str] = field(default_factory=list)
    mcc_names: str | None = None
    task: str | None = None
    n_classes: int | None = None
    metrics: list[Literal[METRICS]] = check(default_factory=list)
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


class TextSpec(Section):
    """The `text` section (conf/text/*.yaml): the format clients are rendered in and its budget (render/)."""

    format: Literal[FORMATS] = check()
    max_tokens: Optional[Annotated[int, Field(gt=2)]] = check(description="bos + eos + text, or null")
    chunk_events: Optional[Positive] = check()
    count_tokenizer: str | None = None
    mcc_descriptions: bool | None = True  # the code's default where the key is absent (as before)
    calendar: list[Literal[CALENDAR]] = check()
    calendar_on_change: bool | None = False  # the code's default where the key is absent (other formats)


class ColesSpec(Section):
    """The `coles` section (conf/coles/*.yaml): the CoLES baseline's inputs, encoder, loss and training
    (evaluation/coles_model.py)."""

    encoder_type: Literal["gru", "lstm"] = check()
    hidden_size: int | None = None
    bidir: bool | None = None
    trainable_starter: str | None = None
    use_norm_encoder: bool | None = None
    numeric: Any = None  # {column: transform} or a list of columns (log each)
    categorical: list[str] | None = None
    time_features: list[Literal[TIME_FEATURES]] = check()
    time_numeric: list[Literal[TIME_FEATURES]] = check()
    embeddings: dict[str, dict[str, int]] | None = None
    category_embedding_dim: int | None = None
    embeddings_noise: float | None = None
    norm_embeddings: bool | None = None
    use_batch_norm_with_lens: bool | None = None
    loss: dict[str, Any] | None = None  # margin, neg_count
    max_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    lr_step_size: int | None = None
    lr_step_gamma: float | None = None
    trx_dropout: float | None = None
    split_count: int | None = None
    cnt_min: int | None = None
    cnt_max: int | None = None
    min_seq_len: int | None = None
    inference_max_len: int | None = None
    num_workers: int | None = None
    inference_batch_size: int | None = None


class LogisticSpec(Section):
    """validate.logistic: the linear probe's LogisticRegressionCV (validate.head=logistic)."""

    Cs: Positive = check(description="how many C values, log-spaced over 1e-4 .. 10")
    cv: Annotated[int, Field(ge=2)] = check(description="inner stratified folds of the fold's training clients")
    max_iter: Positive = check()


class Validate(Section):
    """The `validate` section (conf/validate/*.yaml); the validation protocol reads it as part of
    core.sections.ValidationSpec."""

    lightgbm: dict[str, Any]  # {binary, multiclass, common}
    feature_sets: list[Literal[FEATURE_SETS]] = check()
    lightgbm_seed: Literal[SEED_MODES] = check(
        "fixed", description="fixed: lightgbm.common.random_state, as ptls-experiments; run: the run's seed"
    )
    head: Literal[HEADS] = check(
        "lightgbm", description="the downstream model: lightgbm (the published protocol) or logistic (a linear probe)"
    )
    logistic: LogisticSpec | None = None
    n_jobs: int | None = None  # null: the threads this process was given
    random_dim: Optional[Positive] = check(None, description="the random floor's width; null: the llm's width")
    aggregates: dict[str, Any] | None = None  # numeric, categorical, sizes


class SamplingSpec(Section):
    """augment.sampling: per request, n samples of at most max_tokens tokens."""

    temperature: float | None = None
    top_p: float | None = None
    n: Positive = check()
    max_tokens: Positive = check()
    seed: int | None = None


class VllmSpec(Section):
    """augment.vllm (conf/augment/vllm.yaml): the vLLM engine's settings."""

    tensor_parallel_size: int | None = None
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    enforce_eager: bool | None = None


class MixSpec(Section):
    """augment.mix: which augmented texts the text stage adds to the train split (generation/mix.py)."""

    sources: list[str] | None = None
    prompts: list[str] | None = None
    fraction: Annotated[float, Field(ge=0, le=1)] = check()
    with_base: bool | None = None
    seed: int | None = None


class AugmentSpec(Section):
    """The `augment` section (conf/augment/*.yaml): generator, sampling, prompts (generation/)."""

    name: str | None = None
    backend: Literal[AUGMENT_BACKENDS] = check()
    generator: str | None = None
    dtype: Literal[("auto", *DTYPES)] = check()
    use_chat_template: Literal["auto", True, False, "true", "false"] = check()
    transactions_format: Literal[FORMATS] = check()
    batch_size: Positive = check()
    cpu_threads: int | None = None
    clients: dict[str, Any] | None = check(group=AugmentClients)
    sampling: SamplingSpec | None = None
    drop_empty: bool | None = None
    drop_truncated: bool | None = None
    system: str | None = None
    user_template: str | None = None
    formats: dict[str, str] | None = None
    analysis: dict[str, str] | None = None
    prompts: dict[str, Any] | None = None
    use: list[str] | None = None
    mix: MixSpec | None = None
    vllm: VllmSpec | None = None


class MethodSpec(Section):
    """finetune.methods.<run>: a head on pooled hidden states or a verbalizer, with LoRA adapters or not."""

    kind: Literal[FINETUNE_KINDS] = check()
    lora: bool | None = None


class LoraSpec(Section):
    r: int | None = None
    alpha: int | None = None
    dropout: float | None = None
    target_modules: list[str] | None = None


class VerbalizerSpec(Section):
    instruction: str | None = None
    question: str | None = None
    label_words: list[str] | None = None
    word_prefix: str | None = None
    unknown_words: Literal[UNKNOWN_WORDS] = check("vocabulary")  # the code's default where the key is absent


class TrainingSpec(Section):
    """finetune.training: steps, batch sizes, learning rates, early stopping, device and precision."""

    precision: Literal[FINETUNE_PRECISIONS] = check()
    device: Literal[FINETUNE_DEVICES] = check()
    max_steps: Positive = check()
    batch_size: Positive = check()
    micro_batch_size: Positive = check()
    eval_batch_size: Positive = check()
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    eval_interval: Positive = check()
    patience: Positive = check()
    gradient_checkpointing: bool | None = None
    cpu_threads: int | None = None
    num_workers: int | None = None


class FinetuneSpec(Section):
    """The `finetune` section (conf/finetune/*.yaml): runs, methods, LoRA, verbalizer, training."""

    enabled: bool | None = None
    model: str | None = None
    runs: Annotated[list[str], Field(min_length=1)] = check(description="keys of finetune.methods")
    methods: dict[str, MethodSpec] | None = None
    pooling: Literal[POOLINGS] = check()
    layer_slice: list[int | None] | None = None
    max_tokens: int | None = None
    lora: LoraSpec | None = None
    training: TrainingSpec | None = None
    verbalizer: VerbalizerSpec | None = None


class Root(Section):
    """The root config (conf/config.yaml): its checked keys and its sections."""

    parallel_seeds: Annotated[int, Field(strict=True, ge=1)] = check(description="seeds run at once")
    max_seq_len: Annotated[int, Field(ge=3)] = check(description="bos + a token + eos")
    shards: Shards | None = None
    splits: SplitsSpec | None = None
    dataset: DatasetSpec | None = None
    text: TextSpec | None = None
    tokenizer: Tokenizer | None = None
    embed: Embed | None = None
    coles: ColesSpec | None = None
    validate: Validate | None = None
    trainer: Trainer | None = None
    augment: AugmentSpec | None = None
    finetune: FinetuneSpec | None = None
    engine: Engine | None = None
    report: Report = None


Config = checks_of(Root)  # what is checked at compose time: the check() fields of the root and its sections


def validate(cfg: DictConfig) -> Config:
    """Check the declared keys of a composed config; the first bad value is a ConfigError naming its key."""
    return check_config(Config, cfg)
