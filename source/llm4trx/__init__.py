"""llm4trx: client embeddings from bank-transaction sequences with causal language models."""

__version__ = "0.1.0"
