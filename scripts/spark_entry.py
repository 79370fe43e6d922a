"""The application file spark-submit runs (scripts/spark_submit.sh): `python -m llm4trx.<STAGE> ARGS...` in the
driver process spark-submit started, so the stage finds spark-submit's session settings (--master, --conf)."""

import runpy
import sys

if __name__ == "__main__":
    stage = sys.argv.pop(1)
    runpy.run_module(f"llm4trx.{stage}", run_name="__main__", alter_sys=True)
