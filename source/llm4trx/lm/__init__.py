"""The language-model side: llm-foundry config and registry plugins, the HF Trainer backend, pooling, tokenizers."""
