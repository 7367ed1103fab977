"""The run's gallery: a few test images per class, correct and wrong, with their heatmaps, for report.md.

Chosen from predictions_test_best.csv: per true class, the `per_kind` most confident correct
predictions and the `per_kind` most confident wrong ones. Explained from the cache alone, so a
finished run gets its gallery in seconds.
"""

from __future__ import annotations

import csv
from pathlib import Path

from fpt.cache.reader import read_metadata
from fpt.stages.explain.explain_run import explain_cached
from fpt.stages.runs.explanation_record import GALLERY, ExplanationRecord
from fpt.stages.runs.trained_run import read_run

PREDICTIONS = "predictions_test_best.csv"


def gallery_samples(predictions: Path, per_kind: int = 2) -> list[str]:
    """Sample ids of the gallery: per true class, the most confident correct and the most confident wrong."""
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    probability_columns = [name for name in rows[0] if name.startswith("p_")] if rows else []
    chosen: list[str] = []
    for label in sorted({int(row["label"]) for row in rows}):
        of_class = [row for row in rows if int(row["label"]) == label]
        confidence = lambda row: float(row[probability_columns[int(row["predicted"])]])  # noqa: E731
        for correct in (True, False):
            kind = [row for row in of_class if (int(row["predicted"]) == label) == correct]
            chosen += [row["sample_id"] for row in sorted(kind, key=confidence, reverse=True)[:per_kind]]
    return chosen


def why_no_gallery(run_dir: Path) -> str | None:
    """Why the run cannot have a gallery (None: it can): no prompts, no test predictions, or a cache that
    does not record token indices."""
    run = read_run(run_dir)
    if not run.model_spec.use_prompts:
        return "the run was trained without prompts"
    if not (run_dir / PREDICTIONS).is_file():
        return f"the run has no {PREDICTIONS}"
    if not read_metadata(run.cache).has_token_indices:
        return f"its cache {run.cache} does not record token indices (`fpt explain --run {run_dir}` says what to do)"
    return None


def write_gallery(run_dir: Path, per_kind: int = 2, show_progress: bool = False,
                  originals: bool = False) -> ExplanationRecord:
    """Explain the gallery's images into <run>/explain/gallery (best checkpoint), drawn over the cache's side
    images, or over the original files with `originals` (`fpt explain --gallery`): a training run opens no
    image file, so that stage two runs where only the cache is."""
    samples = gallery_samples(run_dir / PREDICTIONS, per_kind)
    _, record = explain_cached(run_dir, "test", "best", samples=samples, name=GALLERY, show_progress=show_progress,
                               originals=originals)
    return record
