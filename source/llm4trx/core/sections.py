"""Typed views of config sections, built once by a stage from its composed config and handed to the libraries.

Library modules (data/, evaluation/, generation/, lm/, render/) take plain values or these small frozen
objects, never a raw `DictConfig`: a stage builds them from its config (`DatasetSpec.from_config(cfg.dataset)`)
and hands them on. The exceptions are the config translators lm/foundry_config.py and lm/hf_backend.py, whose job
is to map the composed config key by key onto llm-foundry's and transformers' own configs.

Fields are named as the config keys. Their defaults only say what the code assumed of an absent key (None, or
the `.get(key, default)` it used before); the defaults of the config stay in conf/*.yaml, the declared choices
and ranges in core/schema.py. A field typed as another section is built the same way from its subsection; other
nested values (`dataset.columns`, `dataset.download`, ...) become plain dicts and lists, resolved.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from llm4trx.core.typed import Section, plain


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


class SplitsSpec(Section):
    """The `splits` section (conf/config.yaml): the pytorch-lifestream split protocol (data/splits.py)."""

    test_fraction: float
    n_folds: int
    random_state: int
    val_fraction: float


class ValidationSpec(Section):
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
            metrics=plain(ds.metrics),
            categorical=plain(ds.categorical),
            lightgbm=plain(v.lightgbm),
            lightgbm_seed=v.get("lightgbm_seed", "fixed"),
            n_jobs=v.get("n_jobs"),
            aggregates=plain(v.get("aggregates")),
            seed=cfg.seed,
            progress=cfg.progress,
        )


class RunSpec(Section):
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
            text=plain(cfg.text),
            tokenizer=plain(cfg.tokenizer),
        )


class SamplingSpec(Section):
    """augment.sampling: per request, n samples of at most max_tokens tokens."""

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    n: int | None = None
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
    fraction: float | None = None
    with_base: bool | None = None
    seed: int | None = None


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


class MethodSpec(Section):
    """finetune.methods.<run>: a head on pooled hidden states or a verbalizer, with LoRA adapters or not."""

    kind: str | None = None
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
    unknown_words: str | None = "vocabulary"  # the code's default where the key is absent (as before)


class TrainingSpec(Section):
    """finetune.training: steps, batch sizes, learning rates, early stopping, device and precision."""

    max_steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    eval_batch_size: int | None = None
    lr: float | None = None
    head_lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    eval_interval: int | None = None
    patience: int | None = None
    precision: str | None = None
    device: str | None = None
    gradient_checkpointing: bool | None = None
    cpu_threads: int | None = None
    num_workers: int | None = None


class FinetuneSpec(Section):
    """The `finetune` section (conf/finetune/*.yaml): runs, methods, LoRA, verbalizer, training."""

    enabled: bool | None = None
    model: str | None = None
    runs: list[str] | None = None
    methods: dict[str, MethodSpec] | None = None
    pooling: str | None = None
    layer_slice: list[int | None] | None = None
    max_tokens: int | None = None
    lora: LoraSpec | None = None
    verbalizer: VerbalizerSpec | None = None
    training: TrainingSpec | None = None


class FinetuneRunSpec(Section):
    """What fine-tuning reads (lm/supervised.py, lm/classifiers.py, lm/classifier_trainer.py): the `finetune`
    section, the dataset, the split protocol, the run's context length, seed and progress switch."""

    finetune: FinetuneSpec
    dataset: DatasetSpec
    splits: SplitsSpec
    max_seq_len: int
    seed: int
    progress: bool

    @classmethod
    def from_config(cls, cfg: DictConfig) -> FinetuneRunSpec:
        return cls(
            finetune=FinetuneSpec.from_config(cfg.finetune),
            dataset=DatasetSpec.from_config(cfg.dataset),
            splits=SplitsSpec.from_config(cfg.splits),
            max_seq_len=cfg.max_seq_len,
            seed=cfg.seed,
            progress=cfg.progress,
        )


class ColesSpec(Section):
    """The `coles` section (conf/coles/*.yaml): the CoLES baseline's inputs, encoder, loss and training
    (evaluation/coles_model.py)."""

    numeric: Any = None  # {column: transform} or a list of columns (log each)
    categorical: list[str] | None = None
    time_features: list[str] | None = None
    time_numeric: list[str] | None = None
    embeddings: dict[str, dict[str, int]] | None = None
    category_embedding_dim: int | None = None
    embeddings_noise: float | None = None
    norm_embeddings: bool | None = None
    use_batch_norm_with_lens: bool | None = None
    encoder_type: str | None = None
    hidden_size: int | None = None
    bidir: bool | None = None
    trainable_starter: str | None = None
    use_norm_encoder: bool | None = None
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


class TextSpec(Section):
    """The `text` section (conf/text/*.yaml): the format clients are rendered in and its budget (render/)."""

    format: str | None = None
    max_tokens: int | None = None
    chunk_events: int | None = None
    count_tokenizer: str | None = None
    mcc_descriptions: bool | None = True  # the code's default where the key is absent (as before)
    calendar: list[str] | None = None
