"""Stage `augment`: an LLM rewrites pretraining clients' transactions; writes augment/<name>.jsonl.

    python -m llm4trx.augment augment=hf augment.generator=/models/Qwen2.5-0.5B-Instruct augment.clients.n=100

One line per (client, prompt, sample): client_id, prompt_id, text, generator, finish_reason (+ sample,
n_tokens). Only clients of the pretraining `train` split are used, never `test` ones. Everything that can be
wrong with the config (generator dir, template fields, context budget, backend) is checked before the
model is loaded and before anything is written. The text stage mixes these outputs into its train split
(llm4trx.generation.mix).

Why this stage does not use `run_stage`'s build-and-rename: generation may take GPU-hours and must survive a
kill, and several outputs (one per augment.name) share the augment/ folder. So each finished batch is appended
to augment/<name>.jsonl as complete lines and fsynced, and only then recorded in a ledger
(augment/.<name>.progress.jsonl: the config hash, then per batch the requests done and the output's byte
size). A rerun truncates the output to the last recorded size (dropping a torn line or a batch written but not
recorded) and generates only the requests not in the ledger. augment/_SUCCESS.json is rewritten atomically
when an output is complete; it holds each output's hash and counts.
"""

from __future__ import annotations


import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
from filelock import FileLock
from omegaconf import DictConfig
from tqdm import tqdm

from llm4trx.generation.backends import Sample, check_environment, context_length, generator_dir, load_backend
from llm4trx.generation.prompts import ClientPrompter, build_prompts
from llm4trx.generation.transactions import check_format, transaction_renderer
from llm4trx.core.cli import stage_main
from llm4trx.core.errors import ConfigError, DataError
from llm4trx.core.sections import AugmentSpec, DatasetSpec, TextSpec
from llm4trx.core import registry
from llm4trx.core.stage import SUCCESS_FILE, read_success, require, stage_dir, stage_hash
from llm4trx.data.chunks import read_events
from llm4trx.data.splits import splits_path

log = logging.getLogger(__name__)


def output_hash(cfg: DictConfig) -> str:
    """What an output depends on (the registry: all of augment but `mix`, which the text stage reads)."""
    return stage_hash(cfg, "augment")


def select_clients(cfg: DictConfig, splits_path: Path) -> list[str]:
    """A deterministic (augment.clients.seed) sample of the pretraining train split, sorted."""
    splits = pd.read_parquet(splits_path, columns=["client_id", "split"])
    train = np.array(sorted(splits.loc[splits["split"] == "train", "client_id"].astype(str)))
    c = cfg.augment.clients  # fraction in (0, 1]: core/schema.py
    k = int(round(c.fraction * len(train)))
    if c.n is not None:
        k = min(k, int(c.n))
    order = np.random.default_rng(int(c.seed)).permutation(len(train))
    return sorted(train[order[:k]].tolist())


def validate(cfg: DictConfig):
    """Everything checkable before loading the model: returns (generator dir, tokenizer, prompts, prompter)."""
    from transformers import AutoTokenizer

    if not cfg.get("augment"):
        raise ConfigError("no augment config chosen: add augment=hf (transformers, CPU or GPU) or augment=vllm (GPU)")
    acfg = AugmentSpec.from_config(cfg.augment)
    check_environment(acfg)
    path = generator_dir(acfg)
    prompts = build_prompts(acfg)
    s = acfg.sampling  # n, max_tokens and batch_size >= 1: core/schema.py
    if float(s.temperature) == 0 and int(s.n) > 1:
        raise ConfigError("augment.sampling.temperature=0 (greedy) gives n identical samples; set n=1 or temperature>0")
    context = context_length(acfg, path)
    if int(s.max_tokens) >= context:
        raise ConfigError(
            f"augment.sampling.max_tokens={s.max_tokens} leaves no room for a prompt in the "
            f"generator's context of {context} tokens ({path})"
        )
    tokenizer = AutoTokenizer.from_pretrained(path)
    check_format(acfg.transactions_format)
    prompter = ClientPrompter(tokenizer, acfg, context)
    empty = pd.DataFrame({"event_time": pd.to_datetime([])})
    for prompt in prompts:  # a prompt that does not fit even without transactions fails here
        prompter.fit(prompt, empty)
    return path, tokenizer, prompts, prompter


# ---- the durable output: append + fsync, ledger, resume ------------------------------------------------


def _append_durably(path: Path, lines: list[str]) -> int:
    with open(path, "ab") as f:
        f.write("".join(lines).encode())
        f.flush()
        os.fsync(f.fileno())
        return f.tell()


def _read_ledger(ledger: Path) -> tuple[str | None, list[dict[str, Any]]]:
    """(config hash, batch records) of a ledger; a torn last line (killed mid-write) is cut off the file."""
    if not ledger.exists():
        return None, []
    raw = ledger.read_bytes()
    good, records = 0, []
    for line in raw.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good += len(line)
    if good < len(raw):
        with open(ledger, "r+b") as f:
            f.truncate(good)
    if not records:
        return None, []
    return records[0].get("config_hash"), records[1:]


def _update_success(cfg: DictConfig, folder: Path, name: str, record: dict[str, Any]) -> None:
    """Add one output's record to augment/_SUCCESS.json, atomically and under a lock (outputs share it).

    The top level describes the output completed last (config_hash, keys, inputs as run_stage writes them), so
    a check of "is this config up to date" works as for other stages, and the text stage, which takes
    augment/ as an input when it mixes, rebuilds whenever an output is (re)generated.
    """
    with FileLock(str(folder / ".lock")):
        done = read_success(folder) or {}
        outputs = {**done.get("outputs", {}), name: record}
        body = {
            "stage": "augment",
            "config_hash": record["config_hash"],
            "sections": registry.hashed_sections(cfg, "augment"),
            "inputs": registry.inputs_of(cfg, "augment"),
            "finished_at": record["finished_at"],
            "counts": record["counts"],
            "outputs": outputs,
        }
        tmp = folder / (SUCCESS_FILE + ".tmp")
        tmp.write_text(json.dumps(body, indent=2) + "\n")
        os.replace(tmp, folder / SUCCESS_FILE)


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


COUNT_KEYS = (
    "requests",
    "samples",
    "empty",
    "truncated",
    "dropped",
    "written",
    "prompt_tokens",
    "generated_tokens",
    "generate_seconds",
)


def _keep(sample: Sample, acfg: AugmentSpec) -> tuple[bool, bool, bool]:
    empty = not sample.text.strip()
    truncated = sample.finish_reason == "length"
    drop = (empty and acfg.drop_empty) or (truncated and acfg.drop_truncated)
    return not drop, empty, truncated


def run(cfg: DictConfig) -> Path:
    path, tokenizer, prompts, prompter = validate(cfg)
    acfg = AugmentSpec.from_config(cfg.augment)
    data = require(cfg, "prepare")
    want = output_hash(cfg)
    folder = stage_dir(cfg, "augment")
    name = str(acfg.name)
    out, ledger = folder / f"{name}.jsonl", folder / f".{name}.progress.jsonl"

    finished = (read_success(folder) or {}).get("outputs", {}).get(name)
    have_hash, batches = _read_ledger(ledger)
    if cfg.get("force", False):
        finished, have_hash, batches = None, None, []
        for p in (out, ledger):
            p.unlink(missing_ok=True)
    if finished and finished["config_hash"] == want and out.exists():
        _report(name, finished["counts"], skipped=True)
        return folder
    stale = have_hash if have_hash is not None else (finished or {}).get("config_hash")
    if stale is not None and stale != want:
        raise ConfigError(
            f"{out} was generated with another config (hash {stale}, now {want}); "
            "choose another augment.name, or force=true to regenerate it"
        )

    prompter.render = transaction_renderer(
        acfg.transactions_format, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text), data
    )
    clients = select_clients(cfg, splits_path(data))
    if not clients:
        raise DataError(splits_path(data), "no client of the train split to augment", column="split")
    folder.mkdir(parents=True, exist_ok=True)
    if have_hash is None:
        ledger.write_text(json.dumps({"config_hash": want}) + "\n")
    # Cut what a killed run wrote after its last recorded batch (a torn line, or a batch not in the ledger).
    size = batches[-1]["offset"] if batches else 0
    if size and (not out.exists() or out.stat().st_size < size):
        raise DataError(out, f"shorter than its ledger {ledger.name} records ({size} bytes); force=true regenerates it")
    if out.exists() and out.stat().st_size > size:
        with open(out, "r+b") as f:
            f.truncate(size)
    done = {tuple(k) for b in batches for k in b["done"]}
    requests = [(c, p) for c in clients for p in prompts if (c, p.prompt_id) not in done]
    log.info(
        "augment %s: %d clients x %d prompts, %d already done, %d to generate",
        name,
        len(clients),
        len(prompts),
        len(done),
        len(requests),
    )

    this_run = dict.fromkeys(COUNT_KEYS, 0)
    if requests:
        backend = load_backend(acfg, path, tokenizer)
        events = read_events(data, filters=[("client_id", "in", clients)])
        by_client = {cid: g.reset_index(drop=True) for cid, g in events.groupby("client_id", sort=False)}
        order = {key: i for i, key in enumerate((c, p.prompt_id) for c in clients for p in prompts)}
        bar = tqdm(total=len(requests), desc=f"augment {name}", disable=not cfg.progress, unit="req")
        for batch in _batches(requests, int(acfg.batch_size)):
            ids = [prompter.fit(p, by_client.get(c, events.iloc[:0]))[0] for c, p in batch]
            started = time.perf_counter()
            # Seeded by the batch's first request: an uninterrupted rerun reproduces every batch.
            first = order[(batch[0][0], batch[0][1].prompt_id)]
            results = backend.generate(ids, seed=int(acfg.sampling.seed) * 1_000_003 + first)
            elapsed = time.perf_counter() - started
            lines, counts = _lines_and_counts(batch, ids, results, acfg, str(path))
            counts["generate_seconds"] = elapsed
            offset = _append_durably(out, lines)
            entry = {"offset": offset, "done": [[c, p.prompt_id] for c, p in batch], **counts}
            _append_durably(ledger, [json.dumps(entry) + "\n"])
            batches.append(entry)
            for k in COUNT_KEYS:
                this_run[k] += counts[k]
            bar.update(len(batch))
        bar.close()

    out.touch()
    total = {k: sum(b[k] for b in batches) for k in COUNT_KEYS}
    total["generate_seconds"] = round(total["generate_seconds"], 3)
    total.update(
        clients=len(clients),
        prompts=[p.prompt_id for p in prompts],
        tokens_per_s=_rate(this_run) if requests else _rate(total),
        resumed_from=len(done),
    )
    _update_success(
        cfg,
        folder,
        name,
        {
            "config_hash": want,
            "file": out.name,
            "generator": str(path),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "counts": total,
        },
    )
    _report(name, total, run_counts=this_run if requests else None)
    return folder


def _lines_and_counts(batch, ids, results, acfg: AugmentSpec, generator: str) -> tuple[list[str], dict[str, Any]]:
    """Output lines of one batch (empty/truncated samples left out as configured) and its counts."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    lines = []
    for (cid, prompt), prompt_ids, samples in zip(batch, ids, results):
        counts["requests"] += 1
        counts["prompt_tokens"] += len(prompt_ids)
        for i, sample in enumerate(samples):
            keep, empty, truncated = _keep(sample, acfg)
            counts["samples"] += 1
            counts["generated_tokens"] += sample.n_tokens
            counts["empty"] += empty
            counts["truncated"] += truncated
            counts["dropped"] += not keep
            if keep:
                counts["written"] += 1
                lines.append(
                    json.dumps(
                        {
                            "client_id": cid,
                            "prompt_id": prompt.prompt_id,
                            "text": sample.text,
                            "generator": generator,
                            "finish_reason": sample.finish_reason,
                            "sample": i,
                            "n_tokens": sample.n_tokens,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    return lines, counts


def _rate(counts: dict[str, Any]) -> float:
    return round(counts["generated_tokens"] / counts["generate_seconds"], 2) if counts["generate_seconds"] else 0.0


def _report(name: str, total: dict[str, Any], run_counts: dict[str, Any] | None = None, skipped: bool = False):
    shown = run_counts or total
    what = "up to date (nothing generated); recorded figure:" if skipped or run_counts is None else "this run:"
    print(
        f"augment {name}: {what} {shown['generated_tokens']} tokens in {shown['generate_seconds']:.1f} s "
        f"= {_rate(shown):.1f} tokens/s; total {total['samples']} samples, {total['written']} written, "
        f"{total['empty']} empty, {total['truncated']} cut by max_tokens, {total['dropped']} dropped"
    )


main = stage_main(run)

if __name__ == "__main__":
    main()
