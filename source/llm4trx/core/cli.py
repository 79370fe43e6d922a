"""One Hydra entry point per stage: `python -m llm4trx.<stage> key=value ...`."""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from llm4trx.core.config import CONF_DIR
from llm4trx.core.errors import Llm4trxError

log = logging.getLogger("llm4trx")


def stage_main(run: Callable[[DictConfig], Any]) -> Callable[[], None]:
    """Wrap `run(cfg)` as a Hydra app. User-facing errors become one line on stderr and exit status 2."""

    @hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
    def _main(cfg: DictConfig) -> None:
        try:
            run(cfg)
        except Llm4trxError as err:
            log.error("%s", err)  # Hydra's job logging shows it on the console and in the stage's log file
            sys.exit(2)

    module = run.__module__
    if module == "__main__":  # `python -m llm4trx.<stage>`
        module = getattr(sys.modules["__main__"].__spec__, "name", module)
    stage = module.rsplit(".", 1)[-1]

    def _entry() -> None:
        # Hydra names the job (and so the log folder logs/<job>/) after the file holding the decorated
        # function, which is this one for every stage; name it after the stage instead.
        if not any(arg.startswith("hydra.job.name=") for arg in sys.argv[1:]):
            sys.argv.append(f"hydra.job.name={stage}")
        _main()

    return _entry
