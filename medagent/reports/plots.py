"""PNG plots of a report: ROC curves, confusion matrices, latency histograms, VQA accuracy vs corruption severity.

Figures are built as :class:`matplotlib.figure.Figure` with an explicit Agg canvas instead
of through ``pyplot``: nothing touches the global backend or pyplot's figure registry, so
other code using matplotlib interactively is unaffected and no figure stays open.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from medagent.files import private_dir, replacing, write_private
from medagent.reports.report import PlotFile, StudyReport
from medagent.reports.schema import PROB_PREFIX, TRUTH_PREFIX

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(figure)
    return figure


def _plain(text: str) -> str:
    """Text as matplotlib should print it: a '$' in a finding name must not start mathtext."""
    return text.replace("$", r"\$")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:48] or "finding"


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    with replacing(path) as temporary:  # 0600 like every report file
        figure.savefig(temporary, format="png")
    figure.clear()
    return path


def roc_plots(report: StudyReport, cases: pd.DataFrame, out_dir: Path) -> list[PlotFile]:
    """One ROC curve per finding whose AUROC is defined."""
    from sklearn.metrics import roc_curve

    cases = cases[(cases["run_id"].astype(str) == report.run_id) & (cases["status"] == "succeeded")]
    plots: list[PlotFile] = []
    seen: set[str] = set()
    for index, entry in enumerate(report.findings):
        if entry.auroc.value is None or entry.finding in seen:
            continue
        seen.add(entry.finding)
        truth = pd.to_numeric(cases[TRUTH_PREFIX + entry.finding]).to_numpy(dtype=float)
        score = pd.to_numeric(cases[PROB_PREFIX + entry.finding]).to_numpy(dtype=float)
        keep = ~np.isnan(truth) & ~np.isnan(score)
        fpr, tpr, _ = roc_curve(truth[keep].astype(int), score[keep])
        figure = _new_figure(4.5, 4.5)
        axes = figure.add_subplot()
        axes.plot(fpr, tpr, lw=2, label=f"AUROC {entry.auroc.value:.3f} (n={int(keep.sum())})")
        axes.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        axes.set_title(_plain(f"ROC: {entry.finding}"))
        axes.legend(loc="lower right")
        path = _save(figure, out_dir / f"roc_{index:02d}_{_slug(entry.finding)}.png")
        plots.append(PlotFile(kind="roc", title=f"ROC curve: {entry.finding}", path=path))
    return plots


def confusion_plots(report: StudyReport, out_dir: Path) -> list[PlotFile]:
    """One 2x2 confusion matrix per finding and threshold."""
    plots: list[PlotFile] = []
    for index, entry in enumerate(report.findings):
        c = entry.confusion
        matrix = np.array([[c.tn, c.fp], [c.fn, c.tp]])
        figure = _new_figure(3.8, 3.4)
        axes = figure.add_subplot()
        axes.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
        for (row, col), count in np.ndenumerate(matrix):
            dark = count > matrix.max() / 2
            axes.text(col, row, str(count), ha="center", va="center", color="white" if dark else "black")
        axes.set_xticks([0, 1], ["predicted 0", "predicted 1"])
        axes.set_yticks([0, 1], ["truth 0", "truth 1"])
        at = "labels" if entry.threshold is None else f"p >= {entry.threshold:g}"
        axes.set_title(_plain(f"{entry.finding} ({at})"))
        path = _save(figure, out_dir / f"confusion_{index:02d}_{_slug(entry.finding)}.png")
        plots.append(PlotFile(kind="confusion", title=f"Confusion matrix: {entry.finding} ({at})", path=path))
    return plots


def latency_plot(report: StudyReport, cases: pd.DataFrame, tool_calls: pd.DataFrame | None, out_dir: Path) -> PlotFile:
    """Histograms of case latency and of tool-call durations (per tool, overlaid)."""
    figure = _new_figure(9, 3.6)
    case_axes, tool_axes = figure.subplots(1, 2)
    latency = pd.to_numeric(cases.loc[cases["run_id"].astype(str) == report.run_id, "latency_s"]).dropna()
    case_axes.hist(latency.to_numpy(dtype=float), bins=20, color="tab:blue")
    case_axes.set(title="case latency", xlabel="seconds", ylabel="cases")
    if tool_calls is not None and not tool_calls.empty:
        calls = tool_calls[tool_calls["run_id"].astype(str) == report.run_id]
        for tool, group in calls.groupby("tool", sort=True):
            durations = pd.to_numeric(group["duration_s"]).dropna().to_numpy(dtype=float)
            if durations.size:
                tool_axes.hist(durations, bins=20, alpha=0.6, label=_plain(str(tool)))
        if tool_axes.get_legend_handles_labels()[0]:
            tool_axes.legend(fontsize="small")
    tool_axes.set(title="tool-call duration", xlabel="seconds", ylabel="calls")
    path = _save(figure, out_dir / "latency.png")
    return PlotFile(kind="latency", title="Latency histograms", path=path)


def severity_plots(report: StudyReport, out_dir: Path) -> list[PlotFile]:
    """A VQA run's accuracy against corruption severity, one line per corruption, when it has corruption arms."""
    curves = report.vqa.severity if report.vqa is not None else []
    if not any(point.accuracy.value is not None for curve in curves for point in curve.points):
        return []
    from medagent.reports.vqa_metrics import plot_severity

    path = plot_severity(curves, out_dir / "vqa_severity.png")
    return [PlotFile(kind="severity", title="Accuracy vs corruption severity", path=path)]


def write_plots(
    report: StudyReport, cases: pd.DataFrame, tool_calls: pd.DataFrame | None, out_dir: Path | str
) -> list[PlotFile]:
    """Write every plot of ``report`` as PNG under ``out_dir`` (created) and record them in ``report.plots``;
    plots of a run with untrained results carry the UNTRAINED watermark."""
    out_dir = Path(out_dir)
    private_dir(out_dir)
    plots = [*roc_plots(report, cases, out_dir), *confusion_plots(report, out_dir),
             latency_plot(report, cases, tool_calls, out_dir), *severity_plots(report, out_dir)]
    if report.provenance.untrained:  # a plot opened on its own must say so as the report does
        from medagent.imaging.overlay import watermark_untrained

        for plot in plots:
            write_private(plot.path, watermark_untrained(plot.path.read_bytes()))
    report.plots = plots
    return plots
