"""Checks every layout shares: unique sample ids, labels in range, no empty split, name clashes."""

from __future__ import annotations

from collections import defaultdict

from stages.datasets.problems import LayoutResult
from stages.datasets.samples import SPLITS


def check_structure(result: LayoutResult) -> LayoutResult:
    """Add the layout-independent problems to `result` (in place) and return it."""
    num_classes = len(result.class_names)
    ids: dict[str, str] = {}
    clashing_ids: list[str] = []
    for sample in result.samples:
        if sample.sample_id in ids:
            clashing_ids.append(f"{sample.sample_id}: {ids[sample.sample_id]} and {sample.path}")
        ids.setdefault(sample.sample_id, str(sample.path))
    if clashing_ids:
        result.add("duplicate_sample_id", "error", f"{len(clashing_ids)} sample id(s) would name two images",
                   "Give the images distinct paths.", clashing_ids)
    outside = [f"{s.path} label {s.label}" for s in result.samples if not 0 <= s.label < num_classes]
    if outside:
        result.add("label_out_of_range", "error",
                   f"{len(outside)} image(s) have a label outside 0..{num_classes - 1} ({num_classes} classes)",
                   "Correct the labels or the class list (dataset.classes).", outside)
    counts = {split: sum(1 for s in result.samples if s.split == split) for split in SPLITS}
    empty = [split for split, count in counts.items() if count == 0]
    if empty and not result.errors:
        result.add("empty_split", "error", f"the {', '.join(empty)} split(s) hold no labelled images",
                   "Every split needs at least one labelled image.")
    by_name: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for sample in result.samples:
        by_name[sample.path.name].add((sample.split, sample.label))
    across_splits = sorted(name for name, places in by_name.items() if len({split for split, _ in places}) > 1)
    if across_splits:
        result.add("same_name_across_splits", "warning",
                   f"{len(across_splits)} file name(s) occur in more than one split; if they are the same image, "
                   "the test split leaks into training (each is kept as its own sample)",
                   "Check that these are different images.", across_splits)
    across_classes = sorted(
        name for name, places in by_name.items()
        if any(len({label for split_, label in places if split_ == split}) > 1 for split in SPLITS)
    )
    if across_classes:
        result.add("same_name_across_classes", "warning",
                   f"{len(across_classes)} file name(s) occur under more than one class of a split "
                   "(each is kept as its own sample)",
                   "Check that these are different images and not one image with two labels.", across_classes)
    train_counts = [0] * num_classes
    for sample in result.samples:
        if sample.split == "train" and 0 <= sample.label < num_classes:
            train_counts[sample.label] += 1
    absent = [result.class_names[i] for i, count in enumerate(train_counts) if count == 0]
    if absent and counts["train"]:
        result.add("class_without_training_images", "warning",
                   f"class(es) {absent} have no training images", "Add training images of every class.")
    return result
