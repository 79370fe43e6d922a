"""Loading the run's tokenizer (tokenizer/ or a local HF directory) with the special tokens a stage needs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from llm4trx.core.errors import DataError

log = logging.getLogger(__name__)

WHY = {
    "bos_token": "every sample starts with bos",
    "eos_token": "every sample ends with eos (the end of a client's text)",
    "pad_token": "batches are padded to their longest sequence",
}


def load_tokenizer(folder: Path, need: Sequence[str] = ("bos_token", "eos_token", "pad_token")):
    """A fast tokenizer from `folder` (nothing downloaded); a clear error when it cannot be read or lacks a
    special token in `need`."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True, local_files_only=True)
    except Exception as err:  # transformers raises OSError/ValueError/... for unreadable dirs
        raise DataError(folder, f"not a Hugging Face tokenizer directory ({err})") from err
    for token in need:
        if getattr(tokenizer, token) is None:
            raise DataError(
                folder / "tokenizer_config.json",
                f"the tokenizer has no {token}: {WHY[token]}; rebuild it with `python -m llm4trx.tokenizer`",
                column=token,
            )
    if "pad_token" in need and tokenizer.pad_token_id == tokenizer.eos_token_id:
        log.warning("pad_token == eos_token: the collator masks pads out of the loss, so eos is never learned")
    return tokenizer
