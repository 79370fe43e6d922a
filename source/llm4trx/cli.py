"""One Hydra entry point per stage: `python -m llm4trx.<stage> key=value ...`."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from llm4trx.config import CONF_DIR
from llm4trx.errors import Llm4trxError

log = logging.getLogger("llm4trx")


def stage_main(run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """Wrap `run(cfg)` as a Hydra app. User-facing errors become one line on stderr and exit status 2."""

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except Llm4trxError as err:
            log.error("%s", err)
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return _main
