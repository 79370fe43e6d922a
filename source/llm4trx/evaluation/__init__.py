"""Downstream evaluation: the validation protocol, feature sets (aggregates, random, embeddings), report plots."""
