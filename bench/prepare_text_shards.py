"""Benchmark: raw CSV -> canonical events -> text -> MDS shards, through the real stage functions.

    PYTHONPATH=source .venv/bin/python bench/prepare_text_shards.py            # ~1M transactions
    PYTHONPATH=source .venv/bin/python bench/prepare_text_shards.py --clients 2000   # quicker
    PYTHONPATH=source .venv/bin/python bench/prepare_text_shards.py --memory          # + peak memory per stage
    PYTHONPATH=source .venv/bin/python bench/prepare_text_shards.py --memory --stages prepare --tables none \
        --schema age_pred --clients 50000 --min-events 700 --max-events 1150              # full age_pred size

Prints, measured in the same run:
1. end-to-end transactions/s of prepare + text + shards (the synthetic raw CSV is generated before the clock
   starts; the one-off domain tokenizer training is timed separately);
2. the text rendering rate of llm4trx.render.formats against a straightforward per-row Python rendering of the same
   text (the outputs are asserted equal on a sample of clients);
3. tokens per transaction of every format with the Qwen2 tokenizer and with the domain tokenizer.

With --memory every stage runs in its own child process (`python -m llm4trx.<stage>`, the way scripts/run.sh
runs it) and the table adds each stage's peak resident memory (VmHWM of the stage process, and the largest
ru_maxrss of its worker processes: shards.workers); its times then include the interpreter start and imports
(seconds), so compare them with the in-process ones with care. CPU seconds include worker processes.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from llm4trx import prepare, shards, text, tokenizer
from llm4trx.core.config import compose
from llm4trx.core.sections import DatasetSpec, TextSpec
from llm4trx.data.chunks import to_frame
from llm4trx.render.columns import RenderContext, mcc_label_map
from llm4trx.render.formats import FORMATS, render
from llm4trx.core.stage import stage_dir
from llm4trx.data.synthetic import ensure_raw
from llm4trx.render.tokencount import get_counter

console = Console(width=110)


def per_row_flat(events: pd.DataFrame, ctx: RenderContext) -> dict[str, str]:
    """The reference: the flat format written the obvious way, one Python f-string per transaction."""
    names = mcc_label_map(events["mcc"].unique(), ctx.mcc_names)
    fields = ["date", "merchant category" if ctx.mcc_names else "mcc", "amount", *ctx.categorical]
    lines: dict[str, list[str]] = {}
    dates: dict[str, list[str]] = {}
    for row in events.itertuples(index=False):
        when = row.event_time.strftime("%Y-%m-%d" + (" " + ctx.time_of_day if ctx.time_of_day else ""))
        cats = [getattr(row, c) for c in ctx.categorical]
        cats = ["NA" if c is None or c is pd.NA or c != c else str(c) for c in cats]
        line = ", ".join([when, names[row.mcc], f"{row.amount:.2f}", *cats])
        lines.setdefault(row.client_id, []).append(line)
        dates.setdefault(row.client_id, []).append(row.event_time.strftime("%Y-%m-%d"))
    texts = {}
    for client, body in lines.items():
        head = (
            f"transactions: {len(body)} | from: {dates[client][0]} | to: {dates[client][-1]} | "
            f"fields: {', '.join(fields)}"
        )
        texts[client] = head + "\n" + "\n".join(body)
    return texts


def _cpu() -> float:
    """CPU seconds of this process (incl. its threads) and of its finished children (the shards workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def timed(fn, *args):
    """(result, wall seconds, CPU seconds of this process incl. its threads and worker processes): on a shared
    machine the CPU seconds are the steadier figure, the wall seconds what a user waits."""
    start, cpu = time.perf_counter(), _cpu()
    result = fn(*args)
    return result, time.perf_counter() - start, _cpu() - cpu


# Runs a stage module as __main__ and writes the process's own peak RSS (VmHWM of /proc/self/status: the
# memory of this program only; the rusage of a child also counts the parent's pages at fork) to argv[1].
# Written by an atexit handler: a stage process ends with os._exit after its atexit handlers
# (core/cli.end_stage_process), so nothing after the stage's main runs.
PEAK_WRAPPER = """
import atexit, resource, runpy, sys
out, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]

def write_peak():
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kB: the largest worker process's peak
    open(out, "w").write(f"{hwm} {workers}")

atexit.register(write_peak)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def in_child(stage: str, overrides: list[str]) -> tuple[float, float, float, float]:
    """(wall s, CPU s, peak RSS GB, largest worker's peak RSS GB) of `python -m llm4trx.<stage> overrides` run
    in a child process (CPU includes its worker processes; a forked worker's RSS includes the pages it shares
    with the stage process)."""
    with tempfile.NamedTemporaryFile(suffix=".hwm") as peak:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PEAK_WRAPPER,
                peak.name,
                f"llm4trx.{stage}",
                *overrides,
                "hydra/job_logging=disabled",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        if code:
            raise SystemExit(f"stage {stage} failed (exit {code}):\n{err[-2000:]}")
        own, workers = (int(v) / 1024**2 for v in Path(peak.name).read_text().split())  # kB -> GB
        return wall, usage.ru_utime + usage.ru_stime, own, workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=9000, help="synthetic clients (~110 transactions each)")
    parser.add_argument("--format", default="flat", help="text format of the end-to-end run")
    parser.add_argument("--reference-events", type=int, default=100_000, help="events rendered per row")
    parser.add_argument("--sample-clients", type=int, default=600, help="clients for the tokens/transaction table")
    parser.add_argument("--out", default=None, help="output root (default: a temporary folder)")
    parser.add_argument(
        "--schema", default="rosbank", help="raw schema of the synthetic data: rosbank, age_pred, gender"
    )
    parser.add_argument("--min-events", type=int, default=None, help="dataset.min_events (default: the config's)")
    parser.add_argument("--max-events", type=int, default=None, help="dataset.max_events (default: the config's)")
    parser.add_argument("--memory", action="store_true", help="run each stage in a child; print its peak memory")
    parser.add_argument("--stages", default="prepare,text,tokenizer,shards", help="stages to run (in this order)")
    parser.add_argument(
        "--tables",
        default="all",
        choices=["all", "none"],
        help="none: skip the rendering reference and the tokens-per-transaction table",
    )
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="llm4trx-bench-"))
    overrides = [
        f"paths.output_root={out}",
        "experiment_name=bench",
        "dataset=synthetic",
        "progress=false",
        f"dataset.schema={args.schema}",
        f"dataset.n_clients={args.clients}",
        f"text={args.format}",
        "force=true",
    ]
    overrides += [f"dataset.min_events={args.min_events}"] * (args.min_events is not None)
    overrides += [f"dataset.max_events={args.max_events}"] * (args.max_events is not None)
    cfg = compose(overrides)
    wanted = args.stages.split(",")
    console.print(f"cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()}; output root {out}")

    import streaming  # noqa: F401  (import once before the clock: ~10 s of module loading, not per-transaction work)
    import transformers  # noqa: F401

    label = {
        "prepare": "prepare: CSV -> canonical",
        "text": "text: render + count + truncate",
        "tokenizer": "tokenizer: train BPE (one-off)",
        "shards": "shards: tokenize + MDS",
    }
    modules = {"prepare": prepare, "text": text, "tokenizer": tokenizer, "shards": shards}
    steps = {}  # name -> (wall, CPU[, peak GB])
    steps["raw CSV generation (not counted)"] = timed(ensure_raw, cfg.dataset)[1:]
    for stage in wanted:
        steps[label[stage]] = in_child(stage, overrides) if args.memory else timed(modules[stage].run, cfg)[1:]
    n_events = pd.read_parquet(stage_dir(cfg, "prepare") / "events.parquet", columns=["mcc"]).shape[0]
    counted = [label[s] for s in wanted if s != "tokenizer"]
    total = tuple(sum(steps[k][i] for k in counted) for i in (0, 1))
    steps[" + ".join(s for s in wanted if s != "tokenizer")] = total
    if "tokenizer" in wanted:
        steps["... + tokenizer training"] = tuple(total[i] + steps[label["tokenizer"]][i] for i in (0, 1))
    where = "each stage in a child process" if args.memory else "in this process"
    table = Table(
        title=f"end to end, {n_events:,} synthetic {args.schema}-schema transactions (format {args.format}; {where})"
    )
    for col in ["step", "wall s", "transactions/s", "CPU s", "transactions/CPU-s"] + [
        "peak RSS GB",
        "worker peak GB",
    ] * args.memory:
        table.add_column(col, justify="right")
    for name, figures in steps.items():
        wall, cpu = figures[:2]
        peak = (
            ([f"{figures[2]:.2f}", f"{figures[3]:.2f}" if figures[3] else ""] if len(figures) > 2 else ["", ""])
            if args.memory
            else []
        )
        table.add_row(name, f"{wall:.2f}", f"{n_events / wall:,.0f}", f"{cpu:.2f}", f"{n_events / cpu:,.0f}", *peak)
    console.print(table)
    peaks = [f[2] for k, f in steps.items() if len(f) > 2 and k in label.values()]
    console.print(
        f"end to end ({' + '.join(s for s in wanted if s != 'tokenizer')}): {n_events / total[0]:,.0f} "
        f"transactions/s wall, {n_events / total[1]:,.0f} per CPU-s (goal >= 200,000); load average "
        f"{os.getloadavg()[0]:.1f}" + (f"; largest stage peak RSS {max(peaks):.2f} GB (goal <= 4)" if peaks else "")
    )
    if args.tables == "none" or not {"prepare", "text", "tokenizer"} <= set(wanted):
        return

    # rendering against the per-row reference (same text)
    # The vectorised render gets the frame the text stage renders (data.chunks.to_frame: Arrow strings), the
    # per-row reference plain pandas objects (its fastest input; itertuples over Arrow columns is slower).
    events_path = stage_dir(cfg, "prepare") / "events.parquet"
    events = pd.read_parquet(events_path)
    events["client_id"] = events["client_id"].astype(str)
    ctx = RenderContext.from_events(events, DatasetSpec.from_config(cfg.dataset), TextSpec.from_config(cfg.text))
    vec, t_vec, c_vec = timed(render, to_frame(pq.read_table(events_path)), "flat", ctx)
    cut = events["client_id"].iloc[min(args.reference_events, len(events)) - 1]
    subset = events[events["client_id"] < cut]
    ref, t_ref, c_ref = timed(per_row_flat, subset, ctx)
    sample = list(ref)[:: max(1, len(ref) // 200)]
    mismatched = [c for c in sample if ref[c] != vec[c]]
    assert not mismatched, f"per-row and vectorised texts differ, e.g. client {mismatched[0]}"
    rate_vec, rate_ref = len(events) / t_vec, len(subset) / t_ref
    cpu_vec, cpu_ref = len(events) / c_vec, len(subset) / c_ref
    console.print(
        f"render flat, vectorised: {rate_vec:,.0f} transactions/s wall, {cpu_vec:,.0f} per CPU-s "
        f"({len(events):,} in {t_vec:.2f} s, {c_vec:.2f} CPU-s); per-row Python: {rate_ref:,.0f} wall, "
        f"{cpu_ref:,.0f} per CPU-s ({len(subset):,} in {t_ref:.2f} s, {c_ref:.2f} CPU-s); ratio "
        f"{rate_vec / rate_ref:.1f}x wall, {cpu_vec / cpu_ref:.1f}x CPU (same text on {len(sample)} "
        f"sampled clients; goal >= 20x)"
    )
    console.print(
        f"end to end (prepare + text + shards) vs per-row rendering alone: "
        f"{n_events / total[0] / rate_ref:.2f}x wall, {n_events / total[1] / cpu_ref:.2f}x CPU"
    )

    # tokens per transaction of every format
    clients = events["client_id"].drop_duplicates()
    keep = clients.iloc[:: max(1, len(clients) // args.sample_clients)]
    sample_events = events[events["client_id"].isin(set(keep))]
    counters = {"qwen": get_counter("qwen"), "domain": get_counter(str(stage_dir(cfg, "tokenizer")))}
    table = Table(
        title=f"tokens per transaction, {sample_events.shape[0]:,} transactions of {len(keep)} clients, "
        f"untruncated (domain BPE trained on {args.format} texts)"
    )
    for col in ["format", "qwen tok/trx", "qwen lines only", "vs flat", "domain tok/trx", "domain lines only"]:
        table.add_column(col, justify="right")
    per_format = {}
    for name in FORMATS:
        row = []
        for key, counter in counters.items():
            frame = text.build_texts(sample_events, FORMATS[name], ctx, counter, None)
            kept = frame["n_events_kept"].sum()
            row += [frame["n_tokens"].sum() / kept, (frame["n_tokens"] - frame["n_header_tokens"]).sum() / kept]
        per_format[name] = row
    for name, (q, ql, d, dl) in per_format.items():
        table.add_row(name, f"{q:.2f}", f"{ql:.2f}", f"{q / per_format['flat'][0]:.2f}x", f"{d:.2f}", f"{dl:.2f}")
    console.print(table)
    ratio = per_format["compact"][0] / per_format["flat"][0]
    console.print(f"compact / flat (qwen, tokens per transaction incl. header): {ratio:.2f} (goal <= 0.5)")


if __name__ == "__main__":
    main()
