"""The static HTML report of a search: one file, viewable offline.

It holds a table of the best trials, the metric against each
hyperparameter (one point per trial) and every trial's learning curves.
Plots are matplotlib PNGs embedded as base64, so the file needs no server,
no network and no other file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class TrialSummary:
    """What the report shows of one trial.

    Attributes:
        trial_id: Tune's trial id.
        status: `TERMINATED`, `ERROR`, ...; ASHA's early stops terminate.
        parameters: The sampled hyperparameters.
        history: One dict per reported epoch (`epoch`, `loss`, metrics...),
            in epoch order.
        error: The error message of a failed trial.
    """

    trial_id: str
    status: str
    parameters: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def final(self, metric: str) -> float:
        """The metric at the last reported epoch (NaN when none)."""
        values = [row[metric] for row in self.history if _is_number(row.get(metric))]
        return float(values[-1]) if values else math.nan

    @property
    def epochs(self) -> int:
        return max((int(row["epoch"]) for row in self.history), default=0)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def rank_trials(trials: Sequence[TrialSummary], metric: str) -> list[TrialSummary]:
    """Trials by their final `metric`, best (highest) first, NaN last."""

    def key(trial: TrialSummary) -> tuple[bool, float]:
        value = trial.final(metric)
        return (math.isnan(value), -value if not math.isnan(value) else 0.0)

    return sorted(trials, key=key)


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{encoded}">'


def _metric_against_parameters(
    trials: Sequence[TrialSummary], parameters: Sequence[str], metric: str
) -> str:
    """One small scatter plot per hyperparameter: final metric per trial."""
    columns = 4
    rows = max(1, math.ceil(len(parameters) / columns))
    figure, axes = plt.subplots(
        rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False
    )
    for axis, name in zip(axes.flat, parameters, strict=False):
        values = [trial.parameters.get(name) for trial in trials]
        scores = [trial.final(metric) for trial in trials]
        if all(_is_number(value) for value in values):
            axis.scatter(values, scores)
            if name == "learning_rate":
                axis.set_xscale("log")
        else:
            labels = sorted({str(value) for value in values})
            axis.scatter([labels.index(str(value)) for value in values], scores)
            axis.set_xticks(range(len(labels)), labels)
        axis.set_xlabel(name)
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(parameters) :]:
        axis.set_visible(False)
    figure.suptitle(f"Final {metric} of each trial against each hyperparameter")
    return _png(figure)


def _learning_curves(trials: Sequence[TrialSummary], metrics: Sequence[str]) -> str:
    """Per metric, one line per trial over the epochs."""
    figure, axes = plt.subplots(
        1, len(metrics), figsize=(5.5 * len(metrics), 3.8), squeeze=False
    )
    for axis, metric in zip(axes.flat, metrics, strict=True):
        for trial in trials:
            points = [
                (row["epoch"], row[metric])
                for row in trial.history
                if _is_number(row.get(metric))
            ]
            if points:
                epochs, values = zip(*points, strict=True)
                axis.plot(epochs, values, marker="o", label=trial.trial_id)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize="small")
    figure.suptitle("Learning curves")
    return _png(figure)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(
    trials: Sequence[TrialSummary],
    parameters: Sequence[str],
    metrics: Sequence[str],
) -> str:
    header = ["rank", "trial", "status", "epochs", *metrics, *parameters]
    lines = ["<table>", "<tr>" + "".join(f"<th>{h}</th>" for h in header) + "</tr>"]
    for rank, trial in enumerate(trials, start=1):
        cells = [rank, trial.trial_id, trial.status, trial.epochs]
        cells += [trial.final(metric) for metric in metrics]
        cells += [trial.parameters.get(name, "") for name in parameters]
        lines.append("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    return "\n".join(lines)


STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; }
img { max-width: 100%; }
"""


def write_report(
    path: Path,
    trials: Sequence[TrialSummary],
    metric: str,
    parameters: Sequence[str],
    title: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write the report of `trials`, ranked by their final `metric`.

    Args:
        path: The HTML file to write.
        trials: Every trial of the search.
        metric: The metric the search maximises, e.g. `val_hr@100`.
        parameters: The hyperparameters to plot and list.
        title: The page's heading.
        notes: Lines shown under the heading (settings, where files are).

    Returns:
        `path`.
    """
    ranked = rank_trials(trials, metric)
    shown = [metric] + [
        name
        for name in ("val_hr@10", "val_ndcg@10", "val_loss", "loss")
        if name != metric and any(name in row for t in trials for row in t.history)
    ]
    errors = [
        f"<li><b>{html.escape(t.trial_id)}</b>: {html.escape(t.error or '')}</li>"
        for t in trials
        if t.error
    ]
    body = [
        f"<h1>{html.escape(title)}</h1>",
        "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>",
        f"<h2>Best trials (by final {html.escape(metric)})</h2>",
        _table(ranked, parameters, shown),
        f"<h2>{html.escape(metric)} against each hyperparameter</h2>",
        _metric_against_parameters(trials, parameters, metric),
        "<h2>Learning curves</h2>",
        _learning_curves(trials, [m for m in (metric, "val_loss") if m in shown]),
    ]
    if errors:
        body += ["<h2>Failed trials</h2>", "<ul>" + "".join(errors) + "</ul>"]
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        "<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    path.write_text(page)
    return path
