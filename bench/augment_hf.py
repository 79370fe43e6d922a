"""Generation throughput of the augment stage's hf backend: batched vs one request at a time.

    PYTHONPATH=source .venv/bin/python bench/augment_hf.py --generator outputs/smoke/synthetic/seed_42/hf

Prints tokens/s of `generate` with --batch-size requests per call and, as the reference measured in the same
run, with one request per call; the ratio is the figure (absolute tokens/s do not compare across machines).
Every sample is forced to run the full --max-tokens (no early stop), so both sides generate the same tokens.
"""

from __future__ import annotations

import argparse
import time

from llm4trx.core.sections import AugmentSpec, SamplingSpec
from llm4trx.generation.backends import HFBackend, generator_dir


def tokens_per_s(backend: HFBackend, prompts: list[list[int]], batch_size: int) -> float:
    started, tokens = time.perf_counter(), 0
    for i in range(0, len(prompts), batch_size):
        for samples in backend.generate(prompts[i : i + batch_size], seed=i):
            tokens += sum(s.n_tokens for s in samples)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True, help="local HF causal-LM directory")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()

    from transformers import AutoTokenizer

    acfg = AugmentSpec(
        backend="hf",
        generator=args.generator,
        dtype="auto",
        sampling=SamplingSpec(temperature=0.7, top_p=0.95, n=1, max_tokens=args.max_tokens),
    )
    path = generator_dir(acfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    backend = HFBackend(acfg, path, tokenizer)
    backend.kwargs.update(min_new_tokens=args.max_tokens)  # no early stop: every request generates max_tokens
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    prompts = [
        [vocab[(r * 7919 + t * 31) % len(vocab)] for t in range(args.prompt_tokens)] for r in range(args.requests)
    ]
    tokens_per_s(backend, prompts[:2], 2)  # warm-up
    batched = tokens_per_s(backend, prompts, args.batch_size)
    single = tokens_per_s(backend, prompts, 1)
    print(
        f"augment hf generate on {backend.device}: batch {args.batch_size}: {batched:.1f} tokens/s; "
        f"batch 1 (reference): {single:.1f} tokens/s; ratio {batched / single:.2f}x "
        f"({args.requests} requests x {args.max_tokens} tokens, {args.prompt_tokens}-token prompts)"
    )


if __name__ == "__main__":
    main()
