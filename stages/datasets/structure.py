"""Checks every layout shares: unique sample ids, labels in range, no empty split, name clashes, classes."""

from __future__ import annotations

from collections import defaultdict

from fpt.stages.datasets.problems import LayoutResult
from fpt.stages.datasets.samples import SPLITS

MISSING_FROM_SPLIT_FIX = {
    "val": "Add val images of every class: the best epoch is chosen by val AUC, which cannot weigh the missing ones.",
    "test": "Add test images of every class if their test metrics matter.",
}


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
    check_classes(result)
    return result


def check_classes(result: LayoutResult) -> None:
    """A classifier needs two or more named classes, each seen in training; val and test should hold each too.

    These need only the labels, not the images, so extraction and the dry run report them at once.
    """
    names = result.class_names
    blank = [repr(name) for name in names if not name.strip()]
    if blank:
        result.add("empty_label", "error", f"class name(s) {', '.join(blank)} are empty or only whitespace",
                   "Name every class: rename the class folder, or correct dataset.classes.", [result.sources["train"]])
    if len(names) < 2:
        result.add("too_few_classes", "error",
                   f"the dataset has only {len(names)} class{'' if len(names) == 1 else 'es'} {names}, "
                   "and a classifier needs at least two classes",
                   "Give it images of two or more classes (one folder per class in every split folder, or two or "
                   "more labels in the label table); if dataset.classes is set, list every class in it.",
                   [result.sources["train"]])
    per_split = {split: [0] * len(names) for split in SPLITS}
    for sample in result.samples:
        if 0 <= sample.label < len(names):
            per_split[sample.split][sample.label] += 1
    if not sum(per_split["train"]):
        return  # an empty train split is reported on its own
    untrained = [name for name, count in zip(names, per_split["train"]) if count == 0]
    if untrained:
        result.add("class_without_training_images", "error",
                   f"class(es) {untrained} have no training images, and the model cannot learn a class it never sees",
                   "Add training images of every class, or leave the class out: remove its folders or rows, and "
                   "its name from dataset.classes if that is set.", [result.sources["train"]])
    for split in ("val", "test"):
        missing = [name for name, trained, count in zip(names, per_split["train"], per_split[split])
                   if trained and not count]
        if missing and sum(per_split[split]):
            result.add("class_missing_from_split", "warning",
                       f"the {split} split has no images of class(es) {missing}, so their one-vs-rest AUC and "
                       f"per-class metrics are undefined on {split} (its macro AUC leaves them out, and is NaN "
                       "with fewer than two classes left)",
                       MISSING_FROM_SPLIT_FIX[split],
                       [result.sources[split]])
