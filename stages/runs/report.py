"""Pictures and a one-page report.md for a run folder.

Reads only what the run folder already holds: metrics.jsonl (per-epoch loss and validation
metrics), final_metrics.json, evaluation_*.json and predictions_<split>_<which>.csv. Writes
training_curves.png, roc_<split>_<which>.png, confusion_<split>_<which>.png and report.md.
Everything is drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pydantic import BaseModel  # noqa: E402
from sklearn.metrics import auc as area_under_curve
from sklearn.metrics import roc_curve  # noqa: E402

from fpt.stages.core.files import atomic_write_text, replacing  # noqa: E402
from fpt.stages.runs.explanation_record import EXPLAIN_FOLDER, GALLERY, gallery_record  # noqa: E402
from fpt.stages.runs.metrics import confusion_counts, is_binary, reported_scores, score_header  # noqa: E402
from fpt.stages.runs.run_folder import SplitPredictions, read_predictions  # noqa: E402


def read_epochs(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_figure(figure: Figure, path: Path) -> None:
    try:
        with replacing(path) as tmp:
            figure.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(figure)


def training_curves_figure(epochs: list[dict]) -> Figure:
    numbers = [e["epoch"] for e in epochs]
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(numbers, [e["train_loss"] for e in epochs], marker="o", label="train")
    val_loss = [e["val"].get("loss") for e in epochs]
    if all(v is not None for v in val_loss):
        loss_axis.plot(numbers, val_loss, marker="o", label="validation")
    loss_axis.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    loss_axis.legend()
    auc = [e["val"]["auc"] for e in epochs]
    auc_axis.plot(numbers, auc, marker="o", color="tab:green", label="validation AUC")
    auc_axis.plot(numbers, [e["val"]["accuracy"] for e in epochs], marker="s", color="tab:gray",
                  linestyle="--", label="validation accuracy")
    finite = [(n, a) for n, a in zip(numbers, auc) if a is not None and not math.isnan(a)]
    if finite:
        best_epoch, best_auc = max(finite, key=lambda item: item[1])
        auc_axis.scatter([best_epoch], [best_auc], s=120, facecolors="none", edgecolors="red", zorder=3,
                         label=f"best AUC {best_auc:.3f} (epoch {best_epoch})")
    auc_axis.set(title="Validation", xlabel="epoch", ylabel="score", ylim=(-0.02, 1.02))
    auc_axis.legend(loc="best", fontsize="small", framealpha=0.85)
    for axis in (loss_axis, auc_axis):
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return figure


def roc_figure(predictions: SplitPredictions) -> Figure:
    labels = np.asarray(predictions.labels)
    probabilities = np.asarray(predictions.probabilities)
    figure, axis = plt.subplots(figsize=(5.5, 5))
    for index, name in enumerate(predictions.class_names):
        positives = labels == index
        if positives.all() or not positives.any():
            axis.plot([], [], label=f"{name} (absent or only class: no curve)")
            continue
        false_pos, true_pos, _ = roc_curve(positives, probabilities[:, index])
        area = float(area_under_curve(false_pos, true_pos))
        axis.plot(false_pos, true_pos, label=f"{name} (AUC {area:.3f})")
    axis.plot([0, 1], [0, 1], color="gray", linestyle=":", label="chance")
    axis.set(title=f"ROC, one class vs rest ({predictions.split}, {predictions.which} model)",
             xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axis.legend(loc="lower right", fontsize="small")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def confusion_figure(predictions: SplitPredictions) -> Figure:
    labels = np.asarray(predictions.labels)
    predicted = np.asarray(predictions.probabilities).argmax(axis=1)
    count = len(predictions.class_names)
    matrix = confusion_counts(labels, predicted, count)  # the matrix the scores are computed from
    figure, axis = plt.subplots(figsize=(1.2 * count + 3, 1.1 * count + 2.5))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    threshold = matrix.max() / 2 if matrix.max() else 0.5
    for row in range(count):
        for column in range(count):
            axis.text(column, row, str(matrix[row, column]), ha="center", va="center",
                      color="white" if matrix[row, column] > threshold else "black")
    axis.set_xticks(range(count), predictions.class_names, rotation=30, ha="right")
    axis.set_yticks(range(count), predictions.class_names)
    axis.set(title=f"Confusion matrix ({predictions.split}, {predictions.which} model)",
             xlabel="predicted class", ylabel="true class")
    figure.tight_layout()
    return figure


class MetricRow(BaseModel):
    """One row of the report's metrics: what was scored, its scores, and (test and `fpt evaluate` rows of
    runs that have them) their intervals and per-class rates, with how they were computed."""

    label: str
    metrics: dict
    intervals: dict[str, list[float | None]] | None = None
    per_class: list[dict] | None = None
    bootstrap: dict | None = None


def _metric_rows(run_dir: Path) -> list[MetricRow]:
    rows: list[MetricRow] = []
    final = run_dir / "final_metrics.json"
    if final.is_file():
        payload = json.loads(final.read_text())
        rows.append(MetricRow(label=f"validation, best (epoch {payload['best_epoch']})", metrics=payload["best_val"]))
        for which, label in (("best", "test, best-validation model"), ("last", "test, final model")):
            rows.append(MetricRow(label=label, metrics=payload[f"test_{which}"],
                                  intervals=payload.get(f"test_{which}_ci"),
                                  per_class=payload.get(f"test_{which}_per_class"), bootstrap=payload.get("bootstrap")))
    for path in sorted(run_dir.glob("evaluation_*.json")):
        payload = json.loads(path.read_text())
        rows.append(MetricRow(label=f"`fpt evaluate`: {payload['split']}, {payload['checkpoint']} model",
                              metrics=payload["metrics"], intervals=payload.get("metrics_ci"),
                              per_class=payload.get("per_class"), bootstrap=payload.get("bootstrap")))
    return rows


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


def _with_interval(value: float | None, interval: list[float | None] | None) -> str:
    """0.898 (0.861-0.931); n/a where the score is undefined."""
    if value is None or math.isnan(value):
        return "n/a"
    if not interval or interval[0] is None or interval[1] is None:
        return f"{value:.3f}"
    return f"{value:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def _interval_markdown(rows: list[MetricRow], fields: tuple[str, ...], binary: bool) -> list[str]:
    """The intervals of the rows that have them, and the sensitivity and specificity of every class
    for the first of them (the best-validation model on the test split, where the run has it)."""
    with_intervals = [row for row in rows if row.intervals]
    if not with_intervals:
        return []
    settings = with_intervals[0].bootstrap or {}
    lines = ["### 95 % confidence intervals", "",
             "| | " + " | ".join(score_header(f, binary) for f in fields) + " |", "|---|" + "---:|" * len(fields)]
    lines += [f"| {row.label} | " + " | ".join(_with_interval(row.metrics.get(f), (row.intervals or {}).get(f))
                                             for f in fields) + " |" for row in with_intervals]
    lines += ["", f"Bootstrap percentile intervals from {settings.get('resamples')} resamples (seed "
              f"{settings.get('seed')}) of the split's images, drawn with replacement within each true class so "
              "that every class is in every resample; all the scores of a row come from the same resamples. "
              "Differences inside these intervals are noise; `fpt compare` tests the AUC difference of two runs.", ""]
    first = next((row for row in with_intervals if row.per_class), None)
    if first is not None and first.per_class is not None:
        lines += [f"### Sensitivity and specificity per class ({first.label})", "",
                  "| class | images | sensitivity | specificity |", "|---|---:|---:|---:|"]
        lines += [f"| {rates['class_name']} | {rates['images']} | "
                  f"{_with_interval(rates['sensitivity'], rates['sensitivity_ci'])} | "
                  f"{_with_interval(rates['specificity'], rates['specificity_ci'])} |" for rates in first.per_class]
        lines += ["", "Each class against the rest: sensitivity is the share of its images predicted as it, "
                  "specificity the share of the other images not predicted as it (95 % intervals as above). "
                  "final_metrics.json and evaluation_*.json hold them for every model and split.", ""]
    return lines


def _markdown(run_dir: Path, pictures: dict[str, Path], epochs: list[dict]) -> str:
    run = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    lines = [f"# Run {run_dir.name}", ""]
    if run:
        classes = ", ".join(run.get("class_names", []))
        lines += [
            f"Trained from the cache `{run.get('cache')}` (key `{str(run.get('cache_key', ''))[:16]}`); "
            f"{run.get('learnable_params', 0):,} learnable parameters, learning rate {run.get('lr')}, "
            f"{len(epochs)} epoch(s). Classes: {classes}.",
            "",
        ]
    rows = _metric_rows(run_dir)
    if rows:
        binary = is_binary(rows[0].metrics)
        fields = reported_scores(binary)
        lines += ["## Metrics", "", "| | " + " | ".join(score_header(f, binary) for f in fields) + " |",
                  "|---|" + "---:|" * len(fields)]
        lines += [f"| {row.label} | " + " | ".join(_format(row.metrics.get(f)) for f in fields) + " |" for row in rows]
        lines += ["", ("F1, precision and recall are the positive class's (the second class); sensitivity and "
                       "specificity are the recall of the positive and of the negative class." if binary else
                       "F1, precision and recall are macro averages; AUC is one-vs-rest macro."),
                  "Kappa is quadratic-weighted.", ""]
        lines += _interval_markdown(rows, fields, binary)
    # One page: the curves and the first (split, model) pair are shown, the rest are linked.
    tags = [key[4:] for key in pictures if key.startswith("roc_")]
    shown = {"training_curves", *(f"{kind}_{tags[0]}" for kind in ("roc", "confusion") if tags)}
    others = []
    for key, path in pictures.items():
        title = _title(key)
        if key in shown:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
        else:
            others.append(f"[{title}]({path.name})")
    if others:
        lines += ["More pictures: " + "; ".join(others) + ".", ""]
    lines += _gallery_markdown(run_dir)
    return "\n".join(lines)


def _gallery_markdown(run_dir: Path) -> list[str]:
    """The gallery of explained test images (stages/explain/gallery.py), by true class, correct then wrong."""
    gallery = gallery_record(run_dir)
    if gallery is None:
        return ["## Where the model looked", "",
                f"No gallery yet: `fpt explain --run {run_dir} --gallery` draws the heatmaps of a few test images.", ""]
    folder = f"{EXPLAIN_FOLDER}/{GALLERY}"
    lines = ["## Where the model looked", "",
             f"Test images, {gallery.checkpoint} model: left, the fusion prompts' attention over the LPM's kept tokens "
             "(brighter: more); right, how often the LPM kept each patch. " + gallery.aggregation, ""]
    for label, name in enumerate(gallery.class_names):
        entries = [entry for entry in gallery.images if entry.label == label]
        if not entries:
            continue
        lines += [f"### True class {name}", ""]
        for entry in sorted(entries, key=lambda item: item.predicted != label):
            verdict = "correct" if entry.predicted == label else f"wrong: predicted {gallery.class_names[entry.predicted]}"
            lines += [f"![{entry.sample}]({folder}/{entry.picture})", "",
                      f"`{entry.sample}`: {verdict} (p = {entry.probabilities[entry.predicted]:.2f}); "
                      f"{entry.prefix_mass:.0%} of the attention on prefix tokens.", ""]
    return lines


def _title(key: str) -> str:
    if key.startswith("roc_"):
        return "ROC curves per class, " + key[4:].replace("_", ", ") + " model"
    if key.startswith("confusion_"):
        return "Confusion matrix, " + key[10:].replace("_", ", ") + " model"
    return "Training curves"


def write_report(run_dir: Path, draw_pictures: bool = True) -> list[Path]:
    """Draw every picture the run folder's files allow and write report.md; returns the files.

    Without pictures (sweep trials other than the best; drawing costs about a second per run)
    report.md holds the metrics and says how to draw them later: `fpt report <run>`.
    """
    pictures: dict[str, Path] = {}
    epochs = read_epochs(run_dir)
    if not draw_pictures:
        report = run_dir / "report.md"
        atomic_write_text(report, _markdown(run_dir, pictures, epochs)
                          + f"\nPictures were not drawn for this run; `fpt report {run_dir}` draws them.\n")
        return [report]
    if epochs:
        pictures["training_curves"] = run_dir / "training_curves.png"
        save_figure(training_curves_figure(epochs), pictures["training_curves"])
    order = {"test": 0, "val": 1, "train": 2}
    found = sorted(run_dir.glob("predictions_*_*.csv"),
                   key=lambda p: (order.get(p.stem.split("_")[1], 3), p.stem.split("_", 2)[2] != "best", p.name))
    for path in found:
        predictions = read_predictions(path)
        tag = f"{predictions.split}_{predictions.which}"
        pictures[f"roc_{tag}"] = run_dir / f"roc_{tag}.png"
        pictures[f"confusion_{tag}"] = run_dir / f"confusion_{tag}.png"
        save_figure(roc_figure(predictions), pictures[f"roc_{tag}"])
        save_figure(confusion_figure(predictions), pictures[f"confusion_{tag}"])
    report = run_dir / "report.md"
    atomic_write_text(report, _markdown(run_dir, pictures, epochs))
    return [*pictures.values(), report]
