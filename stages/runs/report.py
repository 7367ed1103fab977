"""Pictures and a one-page report.md for a run folder.

Reads only what the run folder already holds: metrics.jsonl (per-epoch loss and validation
metrics), final_metrics.json, evaluation_*.json and predictions_<split>_<which>.csv. Writes
training_curves.png, roc_<split>_<which>.png, confusion_<split>_<which>.png and report.md.
Everything is drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import csv
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


class SplitPredictions(BaseModel):
    """One predictions CSV: the true labels and class probabilities of a split."""

    split: str
    which: str
    class_names: list[str]
    labels: list[int]
    probabilities: list[list[float]]


def read_predictions(path: Path) -> SplitPredictions:
    """predictions_<split>_<which>.csv (sample_id, label, predicted, p_<class>...)."""
    _, split, which = path.stem.split("_", 2)
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    class_names = [name[2:] for name in header[3:]]
    return SplitPredictions(
        split=split, which=which, class_names=class_names,
        labels=[int(row[1]) for row in body],
        probabilities=[[float(x) for x in row[3:]] for row in body],
    )


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


def _metric_rows(run_dir: Path) -> list[tuple[str, dict]]:
    rows: list[tuple[str, dict]] = []
    final = run_dir / "final_metrics.json"
    if final.is_file():
        payload = json.loads(final.read_text())
        rows.append((f"validation, best (epoch {payload['best_epoch']})", payload["best_val"]))
        rows.append(("test, best-validation model", payload["test_best"]))
        rows.append(("test, final model", payload["test_last"]))
    for path in sorted(run_dir.glob("evaluation_*.json")):
        payload = json.loads(path.read_text())
        rows.append((f"`fpt evaluate`: {payload['split']}, {payload['checkpoint']} model", payload["metrics"]))
    return rows


def _format(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.4f}"


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
        binary = is_binary(rows[0][1])
        fields = reported_scores(binary)
        lines += ["## Metrics", "", "| | " + " | ".join(score_header(f, binary) for f in fields) + " |",
                  "|---|" + "---:|" * len(fields)]
        lines += [f"| {label} | " + " | ".join(_format(metrics.get(f)) for f in fields) + " |"
                  for label, metrics in rows]
        lines += ["", ("F1, precision and recall are the positive class's (the second class); sensitivity and "
                       "specificity are the recall of the positive and of the negative class." if binary else
                       "F1, precision and recall are macro averages; AUC is one-vs-rest macro."),
                  "Kappa is quadratic-weighted.", ""]
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
