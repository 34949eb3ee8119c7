"""Run outputs: a markdown table, a JSON record and a PNG plot of accuracy against label fraction."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from seer.evaluation.protocol import FeatureResult, Protocol


@dataclass
class EvalReport:
    """Everything one evaluation run measured, and how."""

    source: str  # the checkpoint evaluated
    data: dict[str, Any]  # name, train / test sizes, classes
    protocol: Protocol
    results: list[FeatureResult]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fractions(self) -> list[float]:
        return sorted({s.fraction for r in self.results for s in r.probe})

    def labels_at(self, fraction: float) -> int:
        return next(s.labels for r in self.results for s in r.probe if s.fraction == fraction)


def format_fraction(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _cell(result: FeatureResult, fraction: float) -> str:
    score = result.score(fraction)
    if score is None:
        return "-"
    if len(score.accuracies) == 1:
        return f"{score.mean:.1f}"
    return f"{score.mean:.1f} ± {score.std:.1f}"


def markdown_table(report: EvalReport) -> str:
    """The results table with a caption saying what each number is."""
    p, d = report.protocol, report.data
    fractions = report.fractions
    header = ["features", "dim"]
    header += [f"{format_fraction(f)} ({report.labels_at(f)} labels)" for f in fractions]
    header.append(f"k-NN (k={p.knn_k})")
    lines = [
        "| " + " | ".join(header) + " |",
        "|:--|--:|" + "--:|" * (len(fractions) + 1),
    ]
    for result in report.results:
        cells = [result.name, str(result.dim)] + [_cell(result, f) for f in fractions]
        cells.append(f"{result.knn:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    caption = (
        f"Top-1 accuracy (%) on the test split of {d['name']} ({d['test']} images, {d['classes']} classes; "
        f"{d['train']} training images). Linear probe on standardized frozen features, weight decay "
        f"chosen on held-out folds of the labelled subset; below 100% of the labels: "
        f"mean ± std over {p.draws} per-class draws. k-NN: cosine, k={p.knn_k}, "
        f"T={p.knn_temperature:g}, all training labels."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def to_json(report: EvalReport) -> dict[str, Any]:
    results = []
    for r in report.results:
        probe = {
            format_fraction(s.fraction): {
                "fraction": s.fraction,
                "labels": s.labels,
                "mean": s.mean,
                "std": s.std,
                "accuracies": s.accuracies,
                "weight_decays": s.weight_decays,
            }
            for s in r.probe
        }
        results.append(
            {
                "name": r.name,
                "baseline": r.baseline,
                "dim": r.dim,
                "probe": probe,
                "knn": r.knn,
                "seconds": r.seconds,
            }
        )
    return {
        "source": report.source,
        "data": report.data,
        "protocol": asdict(report.protocol),
        "results": results,
        "seconds": report.seconds,
        **report.extra,
    }


def plot(report: EvalReport, path: Path) -> None:
    """Probe accuracy against label fraction (log axis), one line per feature set, k-NN as stars."""
    import matplotlib

    matplotlib.use("Agg")  # headless: never try to open a window
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, result in enumerate(report.results):
        color = f"C{i}"
        xs = [s.fraction for s in result.probe]
        ax.errorbar(
            xs,
            [s.mean for s in result.probe],
            yerr=[s.std for s in result.probe],
            marker="o",
            capsize=3,
            color=color,
            label=result.name,
            linestyle="--" if result.baseline else "-",
            linewidth=1.2 if result.baseline else 2.2,
        )
        if not math.isnan(result.knn):
            ax.plot([1.0], [result.knn], marker="*", markersize=13, color=color, linestyle="none")
    ax.set_xscale("log")
    fractions = report.fractions
    ax.set_xticks(fractions, [f"{format_fraction(f)}\n({report.labels_at(f)})" for f in fractions])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (fraction, count)")
    ax.set_ylabel("top-1 accuracy on the test split (%)")
    ax.set_title(
        f"{report.data['name']}: linear probe (mean ± std over draws; dashed: baselines), k-NN (stars)"
    )
    ax.grid(True, alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    star = Line2D([], [], marker="*", markersize=11, color="gray", linestyle="none", label="k-NN, all labels")
    ax.legend(handles=[*handles, star], fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(report: EvalReport, out_dir: Path) -> dict[str, Path]:
    """Write eval.md, eval.json and eval.png into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "eval.md", "json": out_dir / "eval.json", "plot": out_dir / "eval.png"}
    _atomic_write(paths["markdown"], markdown_table(report))
    _atomic_write(paths["json"], json.dumps(to_json(report), indent=2) + "\n")
    plot(report, paths["plot"])
    return paths
