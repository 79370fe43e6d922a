"""Generation backends of the augment stage behind one interface: `hf` (transformers) and `vllm` (GPU).

A backend takes pre-tokenized prompts (the stage tokenizes once, with the generator's own tokenizer and chat
template, so both backends see identical inputs) and returns `n` samples per prompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


from llm4trx.core.errors import ConfigError
from llm4trx.core.sections import AugmentSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    text: str
    finish_reason: str  # "stop" (end of sequence) | "length" (cut by max_tokens) | what vLLM reports
    n_tokens: int  # generated tokens, the end-of-sequence token included


class Backend(Protocol):
    def generate(self, prompts: list[list[int]], seed: int) -> list[list[Sample]]:
        """`n` samples for each prompt, in order. `seed` makes a batch reproducible."""


def generator_dir(acfg: AugmentSpec) -> Path:
    if not acfg.generator:
        raise ConfigError(
            "augment.generator is not set: give a local HF causal-LM directory "
            "(e.g. augment.generator=/models/Qwen2.5-7B-Instruct)"
        )
    path = Path(acfg.generator)
    if not path.is_dir():
        raise ConfigError(f"augment.generator: directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"augment.generator: {path} has no config.json; it must be a HF model directory "
            "(save_pretrained, or the export stage's hf/)"
        )
    return path


def context_length(acfg: AugmentSpec, path: Path) -> int:
    """Tokens a request may span (prompt + generation): the model's context, or vllm.max_model_len when set."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    model_ctx = next(
        (
            getattr(config, k)
            for k in ("max_position_embeddings", "n_positions", "max_seq_len")
            if getattr(config, k, None)
        ),
        None,
    )
    if model_ctx is None:
        raise ConfigError(f"augment.generator: {path}/config.json names no context length (max_position_embeddings)")
    limit = (acfg.vllm.max_model_len if acfg.vllm else None) if acfg.backend == "vllm" else None
    if limit:
        if limit > model_ctx:
            raise ConfigError(f"augment.vllm.max_model_len={limit} exceeds the generator's context {model_ctx}")
        return int(limit)
    return int(model_ctx)


def check_environment(acfg: AugmentSpec) -> None:
    """Fail before any model is loaded when the chosen backend cannot run here."""
    if acfg.backend == "vllm":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                "augment.backend=vllm needs a CUDA GPU and none is visible "
                "(torch.cuda.is_available() is False); use augment=hf on CPU"
            )
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise ConfigError(
                f"augment.backend=vllm but vLLM does not import ({err}); "
                "install it with `pip install -r requirements-vllm.txt`"
            ) from err


def _torch_dtype(name: str, on_gpu: bool):
    import torch

    if name == "auto":
        return torch.bfloat16 if on_gpu else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]  # core/schema.py


class HFBackend:
    """transformers `generate`, batched with left padding; a single GPU when visible, else CPU."""

    def __init__(self, acfg: AugmentSpec, path: Path, tokenizer):
        import torch
        from transformers import AutoModelForCausalLM

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cpu" and acfg.cpu_threads:
            torch.set_num_threads(int(acfg.cpu_threads))
        dtype = _torch_dtype(acfg.dtype, self.device == "cuda")
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype).to(self.device).eval()
        self.tokenizer = tokenizer
        tokenizer.padding_side = "left"  # decoder-only models continue from the last position
        # The prompts are token ids already (shared with vLLM), so `pad` is the right call; silence its hint.
        tokenizer.deprecation_warnings["Asking-to-pad-a-fast-tokenizer"] = True
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.eos_ids = sorted(i for i in eos if i is not None)
        if not self.eos_ids:
            raise ConfigError(f"augment.generator: {path} defines no end-of-sequence token")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        s = acfg.sampling
        self.n, self.max_tokens = int(s.n), int(s.max_tokens)
        # use_cache: exported training configs may carry use_cache=false, which would recompute every step.
        self.kwargs = dict(
            max_new_tokens=self.max_tokens,
            num_return_sequences=self.n,
            use_cache=True,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_ids,
        )
        if s.temperature > 0:
            self.kwargs.update(do_sample=True, temperature=float(s.temperature), top_p=float(s.top_p))
        else:
            self.kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[Sample]]:
        torch = self.torch
        torch.manual_seed(seed)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.pad_id
        batch = self.tokenizer.pad(
            {"input_ids": prompts}, padding=True, return_tensors="pt", return_attention_mask=True
        ).to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**batch, **self.kwargs)
        new = out[:, batch["input_ids"].shape[1] :].tolist()
        samples = []
        for row in new:
            stop = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            kept = row if stop is None else row[:stop]
            samples.append(
                Sample(
                    text=self.tokenizer.decode(kept, skip_special_tokens=True),
                    finish_reason="stop" if stop is not None else "length",
                    n_tokens=len(kept) + (stop is not None),
                )
            )
        return [samples[i * self.n : (i + 1) * self.n] for i in range(len(prompts))]


class VLLMBackend:
    """vLLM offline `LLM.generate` on token-id prompts; imported only when this backend is chosen."""

    def __init__(self, acfg: AugmentSpec, path: Path, tokenizer):
        from vllm import LLM, SamplingParams

        v = acfg.vllm
        self.llm = LLM(
            model=str(path),
            tokenizer=str(path),
            dtype=acfg.dtype,
            tensor_parallel_size=int(v.tensor_parallel_size),
            gpu_memory_utilization=float(v.gpu_memory_utilization),
            max_model_len=v.max_model_len,
            enforce_eager=bool(v.enforce_eager),
            seed=int(acfg.sampling.seed),
        )
        s = acfg.sampling
        self.params = dict(
            n=int(s.n), temperature=float(s.temperature), top_p=float(s.top_p), max_tokens=int(s.max_tokens)
        )
        self.SamplingParams = SamplingParams

    def generate(self, prompts: list[list[int]], seed: int) -> list[list[Sample]]:
        from vllm.inputs import TokensPrompt

        params = self.SamplingParams(seed=seed, **self.params)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        return [[Sample(c.text, str(c.finish_reason), len(c.token_ids)) for c in o.outputs] for o in outs]


BACKENDS = {"hf": HFBackend, "vllm": VLLMBackend}


def load_backend(acfg: AugmentSpec, path: Path, tokenizer) -> Backend:
    check_environment(acfg)
    return BACKENDS[acfg.backend](acfg, path, tokenizer)
