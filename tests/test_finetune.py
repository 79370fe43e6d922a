"""The finetune stage (llm4trx.finetune, lm/supervised.py) on a tiny random Llama and the embed fixtures' data."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from embed_fixtures import write_all
from fixtures_lm import PUBLISHED_CONFIGS, write_model_config
from llm4trx.core.config import compose
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import FinetuneRunSpec
from llm4trx.core.stage import stage_dir
from llm4trx.lm import classifier_trainer as trn
from llm4trx.lm import classifiers as clf
from llm4trx.lm import supervised as ft

N_CLIENTS = 150
# Tiny sizes: 3 runs x 5 folds of 4 steps each.
TINY = [
    "experiment=smoke_finetune",
    "progress=false",
    "max_seq_len=96",
    "finetune.training.max_steps=4",
    "finetune.training.eval_interval=2",
    "finetune.training.batch_size=8",
    "finetune.training.micro_batch_size=4",
    "finetune.training.warmup_steps=1",
    "finetune.training.cpu_threads=1",
    "validate.n_jobs=1",
    f"dataset.n_clients={N_CLIENTS}",
    "dataset.max_events=60",
]


def tiny_cfg(out_root, *overrides):
    return compose([f"paths.output_root={out_root}", *TINY, *overrides])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """data/, text/ and hf/ (a random tiny Llama with its BPE tokenizer) of one run."""
    cfg = tiny_cfg(tmp_path_factory.mktemp("finetune") / "outputs")
    write_all(cfg)
    return cfg


@pytest.fixture(scope="module")
def finetuned(inputs):
    """The stage, then validate and the report, as `bash scripts/run_multi_seed.sh experiment=smoke_finetune`
    runs them (tiny sizes; one seed; validate without CoLES and embeddings to keep it short)."""
    from llm4trx.baselines import run as baselines
    from llm4trx.finetune import run as finetune
    from llm4trx.report import run as report
    from llm4trx.validate import run as validate

    recorded = []
    original = ft.make_trainer  # the name supervised.py calls

    def recording(spec, model, tokenizer, train, held, out_dir, callbacks, compute_metrics):
        recorded.append((list(train.ids), list(held.ids)))
        return original(spec, model, tokenizer, train, held, out_dir, callbacks, compute_metrics)

    ft.make_trainer = recording
    try:
        folder = finetune(inputs)
    finally:
        ft.make_trainer = original
    vcfg = OmegaConf.merge(
        inputs,
        {
            "validate": {"feature_sets": ["aggregates", "random"], "concatenations": [], "random_dim": 8},
            "seeds": [int(inputs.seed)],
        },
    )
    baselines(vcfg)  # aggregates, validated once per dataset (validate.lightgbm_seed=fixed)
    validation = validate(vcfg)
    return {"cfg": inputs, "folder": folder, "validation": validation, "report": report(vcfg), "recorded": recorded}


@pytest.mark.slow
def test_end_to_end_rows_curves_and_report(finetuned):
    cfg, folder = finetuned["cfg"], finetuned["folder"]
    results = json.loads((finetuned["validation"] / "results.json").read_text())
    for run in ("head", "head_full", "verbalizer"):
        entry = results["feature_sets"][f"finetune:{run}"]
        for metric in cfg.dataset.metrics:
            assert len(entry[metric]["folds"]) == 5
            assert 0.0 <= entry[metric]["test_mean"] <= 1.0 and entry[metric]["test_std"] >= 0
    curves = json.loads((folder / "curves.json").read_text())
    for run, meta in curves["runs"].items():
        for fold, curve in meta["folds"].items():
            assert [p["step"] for p in curve["eval"]] == [0, 2, 4] or curve["steps"] < 4
            assert curve["best_step"] in [p["step"] for p in curve["eval"]]
            assert len(curve["train"]) == curve["steps"]
    # The predictions come from the best evaluation's weights: validate, scoring them, gives each fold the
    # held-out metric recorded at the best step.
    for run, meta in curves["runs"].items():
        for fold, curve in meta["folds"].items():
            val = results["feature_sets"][f"finetune:{run}"][curves["metric"]]["folds"][int(fold)]["val"]
            assert val == pytest.approx(curve["best_metric"], abs=1e-6), (run, fold)
    assert (
        curves["runs"]["head"]["folds"]["0"]["parameters"]["trainable"]
        < curves["runs"]["head_full"]["folds"]["0"]["parameters"]["trainable"]
    )
    report = finetuned["report"]
    text = (report / "report.md").read_text()
    assert "finetune:verbalizer" in text and "finetune_synthetic.png" in text
    assert (report / "finetune_synthetic.png").stat().st_size > 10_000
    summary = json.loads((report / "report.json").read_text())["datasets"]["synthetic"]
    assert set(summary["finetune_best_steps"][str(cfg.seed)]) == {"head", "head_full", "verbalizer"}


@pytest.mark.slow
def test_folds_never_train_on_their_held_out_or_test_clients(finetuned):
    cfg = finetuned["cfg"]
    splits = pd.read_parquet(stage_dir(cfg, "prepare") / "splits.parquet")
    labeled = splits[splits["labeled"]]
    test = set(labeled.loc[labeled["split"] == "test", "client_id"])
    cv = labeled[labeled["split"] != "test"].set_index("client_id")["fold"]
    assert len(finetuned["recorded"]) == 3 * 5
    for i, (train, held) in enumerate(finetuned["recorded"]):
        fold = i % 5
        assert set(held) == set(cv.index[cv == fold])
        assert set(train) == set(cv.index[cv != fold])
        assert not (set(train) | set(held)) & test
    predictions = pd.read_parquet(finetuned["folder"] / "predictions.parquet")
    assert "target" not in predictions.columns
    assert set(predictions.loc[predictions["part"] == "test", "client_id"]) == test


def test_test_labels_are_never_read(inputs, tmp_path):
    """Without the test clients' targets the stage's inputs load exactly the same."""
    data = tmp_path / "data"
    shutil.copytree(stage_dir(inputs, "prepare"), data)
    splits = pd.read_parquet(data / "splits.parquet")
    test = splits.loc[splits["split"] == "test", "client_id"]
    targets = pd.read_parquet(data / "targets.parquet")
    full = ft.load_protocol(data, 5, 2)
    targets[~targets["client_id"].isin(test)].to_parquet(data / "targets.parquet", index=False)
    without = ft.load_protocol(data, 5, 2)
    assert list(without.test_ids) == list(full.test_ids) and len(full.test_ids) == len(test)
    assert (without.train_y == full.train_y).all() and (without.folds == full.folds).all()


def test_verbalizer_scores_equal_a_manual_next_token_computation(inputs):
    from transformers import AutoModelForCausalLM, DataCollatorWithPadding

    hf = stage_dir(inputs, "export")
    tok = clf.classifier_tokenizer(hf)
    words = ["no", "yes"]
    label_ids = clf.label_token_ids(tok, words, "")
    texts = ["01-02 5411 12\n01-03 6011 7", "01-05 5812 300", "01-09 4111 5\n01-10 4111 6\n01-11 5999 80"]
    sequences = clf.verbalizer_sequences(tok, texts, "\nAnswer:", 64)
    lm = AutoModelForCausalLM.from_pretrained(hf).eval()
    model = clf.VerbalizerClassifier(lm, label_ids, logits_to_keep=True).eval()
    batch = DataCollatorWithPadding(tok)([{"input_ids": s, "attention_mask": [1] * len(s)} for s in sequences])
    assert batch["attention_mask"][:, 0].tolist().count(0) == 2  # left padding: two shorter rows
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"])["logits"]
        for row, seq in enumerate(sequences):
            manual = lm(torch.tensor([seq])).logits[0, -1, label_ids]
            torch.testing.assert_close(scores[row], manual, atol=1e-4, rtol=1e-4)
    # The prompt ends with the instruction's tokens; the text keeps its most recent tokens when cut.
    answer = tok("\nAnswer:", add_special_tokens=False)["input_ids"]
    assert all(seq[-len(answer) :] == answer for seq in sequences)
    short = clf.verbalizer_sequences(tok, [texts[2]], "\nAnswer:", 12)[0]
    assert len(short) == 12 and short[-len(answer) :] == answer


def test_chat_template_wraps_the_prompt(inputs):
    tok = clf.classifier_tokenizer(stage_dir(inputs, "export"))
    tok.chat_template = "{% for m in messages %}<s>user: {{ m['content'] }}\n{% endfor %}assistant:"
    before, after = clf.prompt_parts(tok, " Q?")
    assert tok.decode(before) == "<s>user: " and tok.decode(after) == " Q?\nassistant:"


def test_lora_leaves_base_weights_unchanged(inputs, tmp_path):
    cfg = inputs
    spec = FinetuneRunSpec.from_config(cfg)
    prep = ft.prepare(spec, stage_dir(cfg, "export"), stage_dir(cfg, "prepare"), stage_dir(cfg, "text"))
    ids = prep.protocol.train_ids[:24]
    samples = trn.Samples(ids, [prep.sequences["head"][c] for c in ids], prep.protocol.train_y[:24])
    for run, lora in (("head", True), ("head_full", False)):
        torch.manual_seed(0)
        model = clf.build_model(spec, run, prep.model_dir, None)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer = trn.make_trainer(
            spec, model, prep.tokenizer, samples, samples, tmp_path / run, [], lambda pred: {"auroc": 0.5}
        )
        trainer.train()
        changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
        base = {n for n in before if "lora_" not in n and not n.startswith("head.")}
        assert {n for n in changed if n.startswith("head.")}, run
        if lora:
            assert changed and not changed & base, sorted(changed & base)[:3]
            assert any("lora_" in n for n in changed)
            assert all(not p.requires_grad for n, p in model.named_parameters() if n in base)
        else:
            assert changed & base


# ------------------------------------------------------------------------------------------ bad input


def assert_fails_before_writing(cfg, error, match):
    from llm4trx.finetune import run

    with pytest.raises(error, match=match):
        run(cfg)
    folder = stage_dir(cfg, "finetune")
    assert not folder.exists() and not list(folder.parent.glob(".finetune*"))


def fresh_copy(inputs, tmp_path, edit=None):
    """A new run directory holding copies of the run's data/, text/ and hf/ (no finetune/ yet); `edit(targets,
    splits)` may rewrite its targets.parquet."""
    cfg = OmegaConf.merge(inputs, {"paths": {"output_root": str(tmp_path / "outputs")}})
    for stage in ("prepare", "text", "export"):
        shutil.copytree(stage_dir(inputs, stage), stage_dir(cfg, stage))
    if edit is not None:
        data = stage_dir(cfg, "prepare")
        targets, splits = pd.read_parquet(data / "targets.parquet"), pd.read_parquet(data / "splits.parquet")
        edit(targets, splits).to_parquet(data / "targets.parquet", index=False)
    return cfg


def cfg_with(inputs, tmp_path, **changes):
    return OmegaConf.merge(fresh_copy(inputs, tmp_path), OmegaConf.create(changes))


def test_label_words_that_collide_or_are_empty(inputs, tmp_path):
    collide = cfg_with(inputs, tmp_path, finetune={"verbalizer": {"label_words": ["no", "nothing"]}})
    assert_fails_before_writing(collide, ConfigError, "start with the same token")
    empty = cfg_with(inputs, tmp_path / "b", finetune={"verbalizer": {"label_words": ["no", ""]}})
    assert_fails_before_writing(empty, ConfigError, "is empty for the tokenizer")
    count = cfg_with(inputs, tmp_path / "c", finetune={"verbalizer": {"label_words": ["no", "yes", "maybe"]}})
    assert_fails_before_writing(count, ConfigError, "one word per class")


def test_label_words_unknown_to_the_field_tokenizer_are_scored_by_spare_vocabulary_tokens():
    """tokenizer=fields (smoke's) has one id per transaction word and no "no"/"yes": each unknown label word gets
    a distinct token of the vocabulary, the last ids (its rarest words), never unk or another special token."""
    from llm4trx.tokenizer import train_domain_tokenizer

    texts = ["d0@14 m5411 a12 d1@09 m6011 a20", "d0@14 m5411 a13 d2@20 m5812 a12", "d0@09 m5411 a12"]
    tok = train_domain_tokenizer(
        "fields",
        iter(texts),
        100,
        1,
        {"bos_token": "<|bos|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": "<|unk|>"},
    )
    assert tok("yes", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    ids = clf.label_token_ids(tok, ["no", "yes"], " ")
    last = sorted(tok.get_vocab().values(), reverse=True)
    assert ids == last[:2] and not set(ids) & set(tok.all_special_ids)
    # A word the vocabulary has keeps its own token; the unknown one takes the last id not already taken.
    known = tok.convert_tokens_to_ids(tok.convert_ids_to_tokens(last[0]))
    assert clf.label_token_ids(tok, [tok.convert_ids_to_tokens(last[0]), "no"], "") == [known, last[1]]
    with pytest.raises(ConfigError, match=r"\['no', 'yes'\] are not in the tokenizer's vocabulary"):
        clf.label_token_ids(tok, ["no", "yes"], " ", unknown="error")


def test_lora_target_modules_the_model_lacks(inputs, tmp_path):
    cfg = cfg_with(inputs, tmp_path, finetune={"lora": {"target_modules": ["q_proj", "c_attn"]}})
    assert_fails_before_writing(cfg, ConfigError, r"\['c_attn'\] are not modules of the model")


def test_model_dir_without_weights(inputs, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(stage_dir(inputs, "export"), bare)
    for weights in bare.glob("*.safetensors"):
        weights.unlink()
    assert_fails_before_writing(
        cfg_with(inputs, tmp_path / "a", finetune={"model": str(bare)}), DataError, "without weights"
    )
    assert_fails_before_writing(
        cfg_with(inputs, tmp_path / "b", finetune={"model": str(tmp_path / "nope")}), ConfigError, "not a directory"
    )


def test_target_with_more_classes_than_n_classes(inputs, tmp_path):
    def edit(targets, splits):
        targets.loc[targets.index[0], "target"] = 2
        return targets

    assert_fails_before_writing(fresh_copy(inputs, tmp_path, edit), DataError, r"outside \[0, 2\)")


def test_fold_with_one_class_only(inputs, tmp_path):
    def edit(targets, splits):
        fold0 = splits.loc[splits["fold"] == 0, "client_id"]
        targets.loc[targets["client_id"].isin(fold0), "target"] = 1
        return targets

    assert_fails_before_writing(fresh_copy(inputs, tmp_path, edit), DataError, "fold 0: its held-out part")


# ------------------------------------------------------------------------------------------ GPU configs


@pytest.mark.parametrize("option", ["llama_3_2_1b_lora", "llama_3_2_3b_lora"])
def test_gpu_configs_validate_against_the_published_architecture(tmp_path, monkeypatch, option):
    """bf16 + LoRA on one GPU: the config is consistent and its LoRA targets exist in Llama-3.2 (a weightless
    copy from the published config.json, on the meta device)."""
    name = option.removesuffix("_lora")
    model_dir = write_model_config(tmp_path / name, PUBLISHED_CONFIGS[name])
    cfg = compose([f"paths.output_root={tmp_path}", f"finetune={option}", f"finetune.model={model_dir}"])
    assert cfg.finetune.training.precision == "bf16" and all(cfg.finetune.methods[r].lora for r in cfg.finetune.runs)
    if not torch.cuda.is_available():  # on a machine without a GPU: refused before anything loads
        with pytest.raises(ConfigError, match="CUDA"):
            ft.check_config(FinetuneRunSpec.from_config(cfg))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ft.check_config(FinetuneRunSpec.from_config(cfg))
    clf.check_lora_targets(model_dir, list(cfg.finetune.lora.target_modules))
    with pytest.raises(DataError, match="without weights"):
        ft.check_model_dir(model_dir)


@pytest.mark.gpu
def test_gpu_bf16_lora_fine_tuning_runs(inputs, tmp_path):
    cfg = OmegaConf.merge(
        inputs,
        {
            "paths": {"output_root": str(tmp_path / "o")},
            "finetune": {"runs": ["head", "verbalizer"], "training": {"precision": "bf16", "device": "cuda"}},
        },
    )
    for stage in ("prepare", "text", "export"):
        shutil.copytree(stage_dir(inputs, stage), stage_dir(cfg, stage))
    from llm4trx.finetune import run

    folder = run(cfg)
    assert (folder / "predictions.parquet").is_file()
