"""PNG plots of the multi-seed report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def plot_losses(losses: dict[str, list[dict[str, Any]]], dataset: str, path: Path) -> None:
    """Train loss (left) and eval loss (right) against the step, one colour per seed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colours = plt.get_cmap("tab10")
    for i, (seed, records) in enumerate(sorted(losses.items(), key=lambda item: int(item[0]))):
        for ax, split in zip(axes, ("train", "eval")):
            points = sorted((r["step"], r["loss"]) for r in records if r["split"] == split)
            if points:
                steps, values = zip(*points)
                ax.plot(
                    steps,
                    values,
                    color=colours(i % 10),
                    label=f"seed {seed}",
                    marker="o" if split == "eval" else None,
                    markersize=3,
                    linewidth=1.2,
                )
    for ax, title in zip(axes, ("train loss", "eval loss (held-out pretraining clients)")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy (nats / token)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.suptitle(f"{dataset}: pretraining loss per seed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_coles_losses(losses: dict[str, list[dict[str, Any]]], dataset: str, path: Path) -> None:
    """CoLES's mean training loss per epoch, one colour per seed."""
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = plt.get_cmap("tab10")
    for i, (seed, records) in enumerate(sorted(losses.items(), key=lambda item: int(item[0]))):
        points = sorted((r["epoch"], r["loss"]) for r in records)
        epochs, values = zip(*points)
        ax.plot(epochs, values, color=colours(i % 10), label=f"seed {seed}", marker="o", markersize=3, linewidth=1.2)
    ax.set_title(f"{dataset}: CoLES training loss per epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("contrastive loss (mean over the epoch)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metrics(summary: dict[str, Any], path: Path) -> None:
    """One panel per metric: a bar per feature set (mean over seeds), error bar = std over seeds, dots = seeds."""
    names = list(summary["feature_sets"])
    metrics = summary["metrics"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4.5, 1.1 * len(names) + 1.5) * len(metrics), 4.2))
    axes = [axes] if len(metrics) == 1 else list(axes)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes, metrics):
        stats = [summary["feature_sets"][name][metric] for name in names]
        means = [s["test_mean"] for s in stats]
        stds = [s["test_std"] for s in stats]
        seeds = [list(s["per_seed"].values()) for s in stats]
        lows = [min([m - e] + v) for m, e, v in zip(means, stds, seeds)]
        highs = [max([m + e] + v) for m, e, v in zip(means, stds, seeds)]
        # Bars start below the lowest value (not at 0) so that differences of a few points stay visible.
        bottom = max(0.0, math.floor((min(lows) - 0.05) * 20) / 20)
        top = max(highs) + 0.15 * (max(highs) - bottom) + 1e-3
        x = range(len(names))
        ax.bar(
            x,
            [m - bottom for m in means],
            bottom=bottom,
            yerr=stds,
            capsize=5,
            color=[colours(i % 10) for i in x],
            alpha=0.75,
            edgecolor="black",
            linewidth=0.6,
        )
        for i, values in enumerate(seeds):
            offsets = [(j - (len(values) - 1) / 2) * 0.08 for j in range(len(values))]
            ax.scatter([i + o for o in offsets], values, color="black", s=12, zorder=3)
        for i, m in enumerate(means):
            ax.text(i, m + stds[i] + 0.01 * (top - bottom), f"{m:.3f}", ha="center", va="bottom", fontsize=8)
        ax.set_ylim(bottom, top)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
        ax.set_title(f"test {metric}" + (" (headline)" if metric == summary["headline"] else ""))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{summary['dataset']}: mean over {len(summary['seeds'])} seeds, error bar = std over seeds, dots = seeds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(curves: dict[str, dict[str, Any]], dataset: str, path: Path) -> None:
    """Fine-tuning curves (finetune/curves.json of each seed): one row per run, columns train loss, held-out
    loss and the headline metric on the held-out fold by step; colour = fold, line style = seed, star = best step."""
    first = next(iter(curves.values()))
    runs, metric = list(first["runs"]), first["metric"]
    fig, axes = plt.subplots(len(runs), 3, figsize=(13, 3.2 * len(runs)), squeeze=False)
    colours, styles = plt.get_cmap("tab10"), ["-", "--", ":", "-."]
    for s, (seed, meta) in enumerate(sorted(curves.items(), key=lambda item: int(item[0]))):
        for r, run in enumerate(runs):
            for fold, curve in meta["runs"].get(run, {"folds": {}})["folds"].items():
                colour, style = colours(int(fold) % 10), styles[s % len(styles)]
                label = f"fold {fold}" if s == 0 else None
                if curve["train"]:
                    steps, losses = zip(*curve["train"])
                    axes[r][0].plot(steps, losses, color=colour, linestyle=style, linewidth=0.9, alpha=0.8, label=label)
                points = curve["eval"]
                steps = [p["step"] for p in points]
                axes[r][1].plot(
                    steps,
                    [p["loss"] for p in points],
                    color=colour,
                    linestyle=style,
                    marker="o",
                    markersize=2.5,
                    linewidth=1,
                )
                axes[r][2].plot(
                    steps,
                    [p[metric] for p in points],
                    color=colour,
                    linestyle=style,
                    marker="o",
                    markersize=2.5,
                    linewidth=1,
                )
                if curve["best_step"] is not None:
                    axes[r][2].scatter(
                        [curve["best_step"]],
                        [curve["best_metric"]],
                        marker="*",
                        s=70,
                        color=colour,
                        edgecolor="black",
                        linewidth=0.5,
                        zorder=3,
                    )
    for r, run in enumerate(runs):
        for c, title in enumerate(("train loss", "held-out fold loss", f"held-out fold {metric} (★ best step)")):
            axes[r][c].set_title(f"{run}: {title}", fontsize=9)
    for row in axes:
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="upper right")
    seeds = ", ".join(sorted(curves, key=int))
    fig.suptitle(f"{dataset}: fine-tuning per fold (seeds {seeds}; line style = seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_gaps(summary: dict[str, Any], path: Path) -> None:
    """One panel per metric: each gap a − b (rows) on test and on val (out-of-fold), dot = gap averaged over
    seeds, bar = its paired bootstrap interval; the dashed line is 0 (no difference)."""
    metrics = summary["metrics"]
    pairs = list(dict.fromkeys((g["a"], g["b"]) for g in summary["gaps"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 0.55 * len(pairs) + 1.8), squeeze=False)
    styles = {"test": ("tab:blue", -0.12), "val": ("tab:orange", 0.12)}
    for ax, metric in zip(axes[0], metrics):
        for split, (colour, offset) in styles.items():
            rows = [
                (pairs.index((g["a"], g["b"])), g)
                for g in summary["gaps"]
                if g["metric"] == metric and g["split"] == split
            ]
            if not rows:
                continue
            y = [i + offset for i, _ in rows]
            gap = [g["gap"] for _, g in rows]
            err = [[g["gap"] - g["low"] for _, g in rows], [g["high"] - g["gap"] for _, g in rows]]
            label = (
                f"{split} ({rows[0][1]['n_clients']} clients)"
                if split == "test"
                else f"val out-of-fold ({rows[0][1]['n_clients']} clients)"
            )
            ax.errorbar(gap, y, xerr=err, fmt="o", color=colour, capsize=4, label=label)
        ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels([f"{a} − {b}" for a, b in pairs])
        ax.invert_yaxis()
        ax.set_xlabel(f"{metric} gap")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    boot = summary["bootstrap"]
    fig.suptitle(
        f"{summary['dataset']}: gaps with {100 * boot['level']:.0f} % paired bootstrap intervals over "
        f"clients ({boot['n']} resamples, {len(summary['gap_seeds'])} seeds pooled)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
