"""Stage augment (llm4trx.augment): generation with the hf backend on CPU, resume, dropping, mixing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm4trx import augment
from llm4trx.generation.backends import HFBackend, check_environment
from llm4trx.generation.mix import mix_into_train
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError
from llm4trx.core.registry import mixing
from llm4trx.core.sections import AugmentSpec, MixSpec
from llm4trx.core.stage import read_success, run_stage, stage_dir, stage_hash

TRAIN = [f"c{i:02d}" for i in range(8)]
VAL, TEST = ["c08"], ["c09", "c10", "c11"]
CHAT = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def save_tiny_generator(folder: Path, eos_only: bool = False, context: int = 512) -> Path:
    """A randomly initialised tiny Llama + byte-level BPE tokenizer with bos/eos/pad and a chat template.

    eos_only: lm_head is zero, so every logit ties and greedy decoding picks id 0, which is eos: every output
    is empty (finish_reason "stop").
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|eos|>", "<|bos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
    prompts = compose(["augment=hf"]).augment
    corpus = [
        prompts.system,
        prompts.user_template,
        *prompts.formats.values(),
        *prompts.analysis.values(),
        "2021-03-04 12:00,123.45,5411,POS,810,WD_ATM",
    ] * 20
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=1000, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>", chat_template=CHAT
    )
    assert fast.eos_token_id == 0
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    if eos_only:
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def restore_torch_threads():
    """The tests run with augment.cpu_threads=1 (on the shared 2-core test machine OpenMP threads spin against
    other processes: a decode step is ~20x slower with 2 threads under load); give the next module its threads."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def eos_generator(tmp_path_factory):
    return save_tiny_generator(tmp_path_factory.mktemp("gen_eos"), eos_only=True)


def write_data(cfg) -> Path:
    """data/ in the canonical schema (the prepare stage's contract, README "Data"), with its _SUCCESS.json."""
    rng = np.random.default_rng(0)
    clients = TRAIN + VAL + TEST
    rows = []
    for cid in clients:
        n = int(rng.integers(5, 40))
        times = pd.Timestamp("2021-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 10**7, n)), unit="s")
        for t in times:
            rows.append(
                {
                    "client_id": cid,
                    "event_time": t,
                    "amount": round(float(rng.normal(100, 30)), 2),
                    "mcc": np.int32(rng.choice([5411, 5812, 6011])),
                    "channel_type": "POS",
                    "currency": "810",
                    "trx_category": str(rng.choice(["POS", "WD_ATM"])),
                }
            )
    events = pd.DataFrame(rows).astype({"mcc": "int32"})
    split = ["train"] * len(TRAIN) + ["val"] * len(VAL) + ["test"] * len(TEST)
    splits = pd.DataFrame(
        {"client_id": clients, "split": split, "fold": np.int8([i % 5 for i in range(8)] + [-1] * 4), "labeled": True}
    )

    def build(tmp):
        events.to_parquet(tmp / "events.parquet")
        splits.to_parquet(tmp / "splits.parquet")
        pd.DataFrame({"client_id": clients, "target": np.int64(rng.integers(0, 2, len(clients)))}).to_parquet(
            tmp / "targets.parquet"
        )
        return {"clients": len(clients)}

    return run_stage(cfg, "prepare", build)


def mix_of(cfg):
    """What the text stage hands mix_into_train: augment.mix, or None while not mixing."""
    return MixSpec.from_config(cfg.augment.mix) if mixing(cfg) else None


def cfg_for(out_root, generator, *overrides):
    return compose(
        [
            f"paths.output_root={out_root}",
            "progress=false",
            "augment=hf",
            "augment.cpu_threads=1",
            f"augment.generator={generator}",
            "augment.sampling.max_tokens=8",
            *overrides,
        ]
    )


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hf_generates_for_train_clients_only(out_root, generator, capsys):
    cfg = cfg_for(
        out_root,
        generator,
        "augment.clients.n=4",
        "augment.use=[html_little,json_large]",
        "augment.sampling.n=2",
        "augment.batch_size=3",
        "augment.drop_empty=false",
    )
    write_data(cfg)
    folder = augment.run(cfg)
    lines = read_lines(folder / "hf.jsonl")
    assert len(lines) == 4 * 2 * 2
    assert {tuple(sorted(line)) for line in lines} == {
        ("client_id", "finish_reason", "generator", "n_tokens", "prompt_id", "sample", "text")
    }
    clients = {line["client_id"] for line in lines}
    assert len(clients) == 4 and clients <= set(TRAIN)
    assert clients == set(augment.select_clients(cfg, stage_dir(cfg, "prepare") / "splits.parquet"))
    assert {(line["prompt_id"], line["sample"]) for line in lines} == {
        (p, s) for p in ("html_little", "json_large") for s in (0, 1)
    }
    assert all(line["finish_reason"] in ("stop", "length") and line["generator"] == str(generator) for line in lines)
    done = read_success(folder)
    counts = done["outputs"]["hf"]["counts"]
    assert counts["samples"] == 16 and counts["written"] == 16 and counts["clients"] == 4
    # the top level reads like any stage's record: its hash is the registry's hash of this config
    assert done["config_hash"] == stage_hash(cfg, "augment") == done["outputs"]["hf"]["config_hash"]
    assert 0 < counts["generated_tokens"] <= 16 * 8 and counts["tokens_per_s"] > 0
    assert "tokens/s" in capsys.readouterr().out
    # a rerun with the same config generates nothing and still reports the figure
    calls = []
    orig = HFBackend.generate
    HFBackend.generate = lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)
    try:
        augment.run(cfg)
    finally:
        HFBackend.generate = orig
    assert calls == [] and "tokens/s" in capsys.readouterr().out


def test_client_choice_is_deterministic_fraction_and_never_test(out_root, generator):
    cfg = cfg_for(out_root, generator, "augment.clients.fraction=0.5")
    data = write_data(cfg)
    chosen = augment.select_clients(cfg, data / "splits.parquet")
    assert len(chosen) == 4 and set(chosen) <= set(TRAIN)
    assert chosen == augment.select_clients(cfg, data / "splits.parquet")
    others = {
        tuple(
            augment.select_clients(
                cfg_for(out_root, generator, "augment.clients.fraction=0.5", f"augment.clients.seed={s}"),
                data / "splits.parquet",
            )
        )
        for s in range(1, 6)
    }
    assert len(others | {tuple(chosen)}) > 1


def test_resume_after_kill_generates_only_what_is_missing(out_root, generator, monkeypatch):
    cfg = cfg_for(
        out_root,
        generator,
        "augment.clients.n=5",
        "augment.use=[html_little]",
        "augment.batch_size=2",
        "augment.drop_empty=false",
        "augment.sampling.temperature=0",
    )
    write_data(cfg)
    seen: list[int] = []
    orig = HFBackend.generate

    def killed_on_third_batch(self, prompts, seed):
        if len(seen) == 2:
            raise KeyboardInterrupt  # the process dies between batches
        seen.append(len(prompts))
        return orig(self, prompts, seed)

    monkeypatch.setattr(HFBackend, "generate", killed_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        augment.run(cfg)
    folder = stage_dir(cfg, "augment")
    assert len(read_lines(folder / "hf.jsonl")) == 4 and "hf" not in (read_success(folder) or {}).get("outputs", {})
    # and it was killed again while writing: a torn output line and a torn ledger line
    with open(folder / "hf.jsonl", "a") as f:
        f.write('{"client_id": "c0')
    with open(folder / ".hf.progress.jsonl", "a") as f:
        f.write('{"offset": 12')

    seen.clear()
    monkeypatch.setattr(HFBackend, "generate", lambda self, p, seed: seen.append(len(p)) or orig(self, p, seed))
    augment.run(cfg)
    assert sum(seen) == 1  # 5 requests, 4 were done
    lines = read_lines(folder / "hf.jsonl")
    assert sorted((x["client_id"], x["prompt_id"]) for x in lines) == sorted(
        (c, "html_little") for c in augment.select_clients(cfg, stage_dir(cfg, "prepare") / "splits.parquet")
    )
    counts = read_success(folder)["outputs"]["hf"]["counts"]
    assert counts["samples"] == 5 and counts["resumed_from"] == 4


def test_changed_config_under_same_name_is_refused_unless_forced(out_root, generator):
    cfg = cfg_for(out_root, generator, "augment.clients.n=1", "augment.use=[html_little]")
    write_data(cfg)
    augment.run(cfg)
    with pytest.raises(ConfigError, match="another config"):
        augment.run(cfg_for(out_root, generator, "augment.clients.n=2", "augment.use=[html_little]"))
    folder = augment.run(cfg_for(out_root, generator, "augment.clients.n=2", "augment.use=[html_little]", "force=true"))
    assert read_success(folder)["outputs"]["hf"]["counts"]["requests"] == 2


def test_empty_and_truncated_outputs_are_counted_and_dropped(out_root, generator, eos_generator):
    cfg = cfg_for(
        out_root,
        eos_generator,
        "augment.clients.n=3",
        "augment.use=[html_little]",
        "augment.sampling.temperature=0",
        "augment.drop_empty=true",
    )
    write_data(cfg)
    folder = augment.run(cfg)
    c = read_success(folder)["outputs"]["hf"]["counts"]
    assert (c["samples"], c["empty"], c["dropped"], c["written"], c["truncated"]) == (3, 3, 3, 0, 0)
    assert (folder / "hf.jsonl").read_text() == ""

    cfg = cfg_for(
        out_root,
        generator,
        "augment.name=cut",
        "augment.clients.n=3",
        "augment.use=[html_little]",
        "augment.sampling.max_tokens=4",
        "augment.sampling.temperature=0",
        "augment.drop_truncated=true",
    )
    folder = augment.run(cfg)
    c = read_success(folder)["outputs"]["cut"]["counts"]
    assert c["truncated"] > 0 and c["dropped"] >= c["truncated"]
    assert c["written"] == c["samples"] - c["dropped"] == len(read_lines(folder / "cut.jsonl"))
    assert all(line["finish_reason"] != "length" for line in read_lines(folder / "cut.jsonl"))


def test_mixing_adds_augmented_texts_to_train_clients_only(out_root, generator):
    cfg = cfg_for(
        out_root, generator, "augment.clients.n=4", "augment.use=[html_little,yaml_large]", "augment.drop_empty=false"
    )
    data = write_data(cfg)
    augment.run(cfg)
    augmented = set(augment.select_clients(cfg, data / "splits.parquet"))
    # an output that also names a test client (e.g. produced on other data) must not leak it into train
    folder = stage_dir(cfg, "augment")
    with open(folder / "hf.jsonl", "a") as f:
        f.write(
            json.dumps(
                {
                    "client_id": TEST[0],
                    "prompt_id": "html_little",
                    "text": "leak",
                    "generator": "x",
                    "finish_reason": "stop",
                }
            )
            + "\n"
        )
    train = pd.DataFrame(
        {"client_id": TRAIN, "text": [f"base {c}" for c in TRAIN], "n_events": 3, "n_events_kept": 3, "n_tokens": 2}
    )
    mix = ["augment.mix.sources=[hf]", "augment.mix.prompts=[yaml_large]", "augment.mix.fraction=0.5"]
    splits = pd.read_parquet(data / "splits.parquet")
    train_ids = set(splits.loc[splits["split"] == "train", "client_id"])
    outputs = (folder, read_success(folder)["outputs"])  # what the text stage passes
    rows, stats = mix_into_train(
        mix_of(cfg_for(out_root, generator, "augment.clients.n=4", *mix)),
        train,
        train_ids,
        outputs,
        count_tokens=lambda texts: [len(t) for t in texts],
    )
    added = rows[rows["source"] != "base"]
    pd.testing.assert_frame_equal(rows[rows["source"] == "base"].drop(columns="source"), train)
    assert stats["clients_with_augmented"] == 4 and stats["clients_mixed"] == 2
    assert added["client_id"].nunique() == 2 == stats["texts_added"] == len(added)
    assert set(added["source"]) == {"augment/hf/yaml_large"} and "pretrain" not in rows
    assert set(added["client_id"]) <= augmented and stats["skipped_not_train"] == 0
    assert (added["n_tokens"] == added["text"].str.len()).all() and (added["n_events"] == 3).all()

    rows, stats = mix_into_train(
        mix_of(cfg_for(out_root, generator, "augment.mix.sources=[hf]", "augment.mix.with_base=false")),
        train,
        train_ids,
        outputs,
    )
    assert stats["skipped_not_train"] == 1 and "leak" not in set(rows["text"])
    assert set(rows.loc[~rows["pretrain"], "client_id"]) == augmented
    assert (rows.loc[~rows["pretrain"], "source"] == "base").all()
    assert stats["texts_added"] == 2 * len(augmented) == (rows["source"] != "base").sum()
    assert pd.read_parquet(data / "splits.parquet").set_index("client_id").loc[TEST, "split"].eq("test").all()
    for off in (cfg_for(out_root, generator), compose([f"paths.output_root={out_root}"])):  # no sources; no augment
        untouched, stats = mix_into_train(mix_of(off), train, train_ids, None)
        assert untouched is train and stats == {"enabled": False}


def test_text_stage_mixes_by_config_and_records_it(out_root, generator):
    from llm4trx import text

    gen = ["augment.clients.n=3", "augment.use=[html_little]", "augment.drop_empty=false"]
    cfg = cfg_for(out_root, generator, *gen)
    write_data(cfg)
    augment.run(cfg)
    plain = text.run(compose([f"paths.output_root={out_root}", "progress=false"]))
    assert json.loads((plain / "stats.json").read_text())["augmented"] == {"enabled": False}
    base_train = read_lines(plain / "train.jsonl")
    unmixed = {split: (plain / f"{split}.jsonl").read_text() for split in ("val", "test")}

    folder = text.run(cfg_for(out_root, generator, *gen, "augment.mix.sources=[hf]", "augment.mix.with_base=false"))
    stats = json.loads((folder / "stats.json").read_text())["augmented"]
    rows = read_lines(folder / "train.jsonl")
    added = [r for r in rows if r["source"] != "base"]
    generated = read_lines(stage_dir(cfg, "augment") / "hf.jsonl")
    assert sorted(r["text"] for r in added) == sorted(g["text"] for g in generated) and len(added) == 3
    assert all(r["n_tokens"] > 0 for r in added) and stats["texts_added"] == 3 and stats["clients_mixed"] == 3
    assert {r["client_id"] for r in rows if r["pretrain"] is False} == {g["client_id"] for g in generated}
    assert [{k: r[k] for k in base_train[0]} for r in rows if r["source"] == "base"] == base_train
    assert {split: (folder / f"{split}.jsonl").read_text() for split in unmixed} == unmixed  # untouched


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.generator={tmp}/no_such_model", "does not exist"),
        (
            "augment.user_template='{transactions} {colour}'",
            r"unknown field\(s\) \{colour\}; known fields: \{transactions\}",
        ),
        ("augment.sampling.max_tokens=2048", "max_tokens=2048 leaves no room"),
        ("augment.use=[no_such_prompt]", "not in augment.prompts"),
        ("augment.system='Be {mood}'", r"augment.system uses unknown field"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(out_root, generator, tmp_path, override, message):
    cfg = cfg_for(out_root, generator, override.replace("{tmp}", str(tmp_path)))
    write_data(cfg)
    calls = []
    orig = HFBackend.__init__
    HFBackend.__init__ = lambda self, *a: calls.append(1) or orig(self, *a)
    try:
        with pytest.raises(ConfigError, match=message):
            augment.run(cfg)
    finally:
        HFBackend.__init__ = orig
    assert calls == [] and not stage_dir(cfg, "augment").exists()


def test_no_augment_config_chosen_is_a_clear_error(out_root):
    cfg = compose([f"paths.output_root={out_root}"])
    assert cfg.get("augment") is None  # the stage is optional: nothing is configured by default
    with pytest.raises(ConfigError, match="augment=hf"):
        augment.run(cfg)


def test_vllm_config_composes_and_needs_a_gpu(out_root, generator):
    import torch

    cfg = cfg_for(out_root, generator, "augment=vllm")
    v = cfg.augment
    assert v.backend == "vllm" and v.name == "vllm" and v.vllm.tensor_parallel_size == 1
    assert 0 < v.vllm.gpu_memory_utilization <= 1 and {"temperature", "top_p", "max_tokens", "n", "seed"} <= set(
        v.sampling
    )
    assert [p.prompt_id for p in augment.build_prompts(AugmentSpec.from_config(v))] == list(v.use)
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU error cannot be shown")
    write_data(cfg)
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        augment.run(cfg)
    assert not stage_dir(cfg, "augment").exists()


def test_smoke_augment_preset_uses_the_smoke_export_and_mixes(out_root):
    cfg = compose(["experiment=smoke_augment", f"paths.output_root={out_root}"])
    smoke = compose(["experiment=smoke", f"paths.output_root={out_root}"])
    assert Path(cfg.augment.generator) == stage_dir(smoke, "export") and cfg.augment.backend == "hf"
    assert cfg.experiment_name != smoke.experiment_name and list(cfg.augment.mix.sources) == [cfg.augment.name]
    assert [p.prompt_id for p in augment.build_prompts(AugmentSpec.from_config(cfg.augment))] == [
        "html_little",
        "json_large",
    ]


@pytest.mark.gpu
def test_vllm_generates_on_gpu(out_root, generator):
    pytest.importorskip("vllm")
    cfg = cfg_for(
        out_root,
        generator,
        "augment=vllm",
        "augment.clients.n=3",
        "augment.use=[html_little]",
        "augment.sampling.n=2",
        "augment.drop_empty=false",
        "augment.vllm.gpu_memory_utilization=0.3",
        "augment.vllm.enforce_eager=true",
        "augment.dtype=float32",
    )
    write_data(cfg)
    check_environment(AugmentSpec.from_config(cfg.augment))
    folder = augment.run(cfg)
    lines = read_lines(folder / "vllm.jsonl")
    assert len(lines) == 6 and {line["client_id"] for line in lines} <= set(TRAIN)
    assert read_success(folder)["outputs"]["vllm"]["counts"]["tokens_per_s"] > 0
