"""Augmentation by a generator LM: backends (transformers, vLLM), prompts, rendering inside prompts, mixing."""
