"""Cross-validation from the cache: stratified, seeded folds of train + val, batches of any set of samples,
and a 3-fold tiny run end to end (fold run folders, cv.json, report.md, the fold ensemble)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cache_testing import class_count_store
from tiny import TRAINING, cli_args, tiny_assignments, tiny_config
from typer.testing import CliRunner

import fpt.stages.train.pack_resume
from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.pipeline.cli import app
from fpt.stages.core.errors import Interrupted
from fpt.stages.datasets.folds import fold_samples, pooled_samples, stratified_folds
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.cross_validation import cross_validate

COUNTS = {"train": [40, 13, 7], "val": [9, 4, 2], "test": [4, 4, 4]}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_count_store(tmp_path_factory.mktemp("cache"), COUNTS)


def test_folds_are_disjoint_stratified_and_validate_every_sample_once(store: Path) -> None:
    reader = CacheReader(store)
    indices, labels = pooled_samples(reader)
    assert len(indices) == 75 and np.bincount(labels).tolist() == [49, 17, 9]
    folds = [fold_samples(reader, 4, 7, fold) for fold in range(1, 5)]
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == indices.tolist()  # every train + val sample validated exactly once
    test_start, test_stop = reader.split_range("test")
    by_index = dict(zip(indices.tolist(), labels.tolist()))
    overall = np.bincount(labels) / len(labels)
    for train, val in folds:
        assert not set(train) & set(val)
        assert sorted(np.concatenate([train, val]).tolist()) == indices.tolist()
        assert not ((train >= test_start) & (train < test_stop)).any()  # the test split untouched
        counts = np.bincount([by_index[i] for i in val], minlength=3)
        assert (np.abs(counts - overall * len(val)) <= 1).all(), counts  # each class's share within one sample


def test_folds_repeat_for_a_seed_and_differ_for_another(store: Path) -> None:
    reader = CacheReader(store)
    first = fold_samples(reader, 3, 0, 2)[1]
    assert np.array_equal(first, fold_samples(reader, 3, 0, 2)[1])
    assert not np.array_equal(first, fold_samples(reader, 3, 1, 2)[1])


def test_too_many_folds_for_a_rare_class_are_refused(store: Path) -> None:
    indices, labels = pooled_samples(CacheReader(store))
    with pytest.raises(UserError, match="class_2 \\(9\\)"):
        stratified_folds(indices, labels, 10, 0, ["class_0", "class_1", "class_2"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_batches_of_a_set_of_samples_give_each_once_with_its_own_data(store: Path, in_memory: bool) -> None:
    reader = CacheReader(store)
    train, val = fold_samples(reader, 3, 0, 1)
    labels = reader.labels()
    shuffled = SplitBatches(reader, train, batch_size=7, shuffle=True, with_features=True, seed=2, buffer_shards=1,
                            in_memory=in_memory)
    epochs = []
    for _ in range(2):
        batches = list(shuffled)
        drawn = np.concatenate([b.indices for b in batches])
        assert sorted(drawn.tolist()) == train.tolist()
        assert all((labels[b.indices] == b.labels).all() for b in batches)
        epochs.append(drawn)
    assert not np.array_equal(*epochs)
    assert len(shuffled) == -(-len(train) // 7)
    assert shuffled.class_counts.tolist() == np.bincount(labels[train], minlength=3).tolist()
    # evaluation: cache order, keys as a plain read gives them
    ordered = list(SplitBatches(reader, val, batch_size=4, shuffle=False, with_features=True, in_memory=in_memory))
    assert np.concatenate([b.indices for b in ordered]).tolist() == val.tolist()
    first = ordered[0]
    expected = np.stack([reader.read(i, i + 1)["keys"][0] for i in first.indices])
    assert np.allclose(first.keys.numpy(), expected)


def _probabilities(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [row[0] for row in rows], np.array([[float(x) for x in row[3:]] for row in rows])


def test_a_three_fold_cross_validation_end_to_end(tmp_path: Path) -> None:
    assignments = tiny_assignments(tmp_path, *TRAINING, "train.epochs=1", "train.loggers=[]", "train.folds=3",
                                   "train.class_weights=balanced", "train.run_name=cv")
    run_extract(tiny_config(tmp_path, *TRAINING), show_progress=False)
    result = CliRunner().invoke(app, ["train-side", "--dataset", "demo", "--quiet", *cli_args(assignments)])
    assert result.exit_code == 0, result.output
    assert "Validation metrics of the 3 folds" in result.output and "ensemble" in result.output
    folder = tmp_path / "runs" / "cv"
    cv = json.loads((folder / "cv.json").read_text())
    assert cv["num_folds"] == 3 and [f["fold"] for f in cv["folds"]] == [1, 2, 3]

    validated = []
    for fold in (1, 2, 3):
        run_dir = folder / f"fold-{fold}"
        run = json.loads((run_dir / "run.json").read_text())
        assert run["fold"] == {"fold": fold, "folds": 3, "seed": 0}
        assert sum(run["train_class_counts"]) == 12  # 2 of the 3 parts of the 18 train + val images
        assert (run_dir / "final_metrics.json").is_file() and (run_dir / "report.md").is_file()
        validated.append(cv["folds"][fold - 1]["best_val"]["auc"])
    assert cv["val_mean"]["auc"] == pytest.approx(np.mean(validated))
    assert cv["val_std"]["auc"] == pytest.approx(np.std(validated, ddof=1))

    # the ensemble: the mean of the folds' test probabilities, and its metrics in cv.json
    ids, first = _probabilities(folder / "fold-1" / "predictions_test_best.csv")
    mean = np.mean([first] + [_probabilities(folder / f"fold-{i}" / "predictions_test_best.csv")[1] for i in (2, 3)],
                   axis=0)
    ensemble_ids, ensemble = _probabilities(folder / "predictions_test_ensemble.csv")
    assert ensemble_ids == ids and len(ids) == 6
    assert np.allclose(ensemble, mean, atol=1e-6)
    assert "ensemble of the 3 folds" in (folder / "report.md").read_text()

    # `fpt evaluate --split val` on a fold validates on that fold's part, as its training did
    evaluated = CliRunner().invoke(app, ["evaluate", "--run", str(folder / "fold-2"), "--split", "val"])
    assert evaluated.exit_code == 0, evaluated.output
    recomputed = json.loads((folder / "fold-2" / "evaluation_val_best.json").read_text())
    assert recomputed["num_samples"] == 6
    assert recomputed["metrics"]["auc"] == pytest.approx(cv["folds"][1]["best_val"]["auc"], abs=1e-6)

    # `fpt explain --split val` on a fold explains the same images, that fold's part, with the same probabilities
    explained = CliRunner().invoke(app, ["explain", "--run", str(folder / "fold-2"), "--split", "val", "--quiet"])
    assert explained.exit_code == 0, explained.output
    record = json.loads((folder / "fold-2" / "explain" / "val_best" / "explain.json").read_text())
    ids, probabilities = _probabilities(folder / "fold-2" / "predictions_val_best.csv")
    assert [image["sample"] for image in record["images"]] == ids
    assert np.allclose([image["probabilities"] for image in record["images"]], probabilities, atol=1e-5)
    reader = CacheReader(Path(json.loads((folder / "fold-2" / "run.json").read_text())["cache"]))
    in_train_split = set(reader.sample_ids()[slice(*reader.split_range("train"))])
    assert in_train_split & set(ids)  # not the dataset's own val split


def test_an_interrupted_cross_validation_goes_on_to_the_uninterrupted_result(tmp_path: Path, torch_threads,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    settings = [*TRAINING, "train.epochs=2", "train.loggers=[]", "train.folds=3"]
    run_extract(tiny_config(tmp_path, *TRAINING), show_progress=False)
    whole = cross_validate(tiny_config(tmp_path, *settings, "train.run_name=whole"), show_progress=False)

    # Ctrl-C just after fold 2's first epoch kept its resume state
    original = fpt.stages.train.pack_resume.PackResume.save

    def save_then_interrupt(self, trial, epoch):
        original(self, trial, epoch)
        if trial.config.train.fold == 2 and epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(fpt.stages.train.pack_resume.PackResume, "save", save_then_interrupt)
    with pytest.raises(Interrupted, match="keeps 1 finished fold.*fold 2 keeps its last finished epoch \\(1\\)"
                                          ".*--resume"):
        cross_validate(tiny_config(tmp_path, *settings, "train.run_name=cut"), show_progress=False)
    monkeypatch.undo()
    cut = tmp_path / "runs" / "cut"
    assert (cut / "fold-1" / "final_metrics.json").is_file() and not (cut / "fold-3").exists()
    fold_one = (cut / "fold-1" / "final_metrics.json").stat().st_mtime_ns

    result = CliRunner().invoke(app, ["train-side", "--resume", str(cut), "--quiet"])
    assert result.exit_code == 0, result.output
    assert (cut / "fold-1" / "final_metrics.json").stat().st_mtime_ns == fold_one  # kept, not trained again
    done = json.loads((cut / "cv.json").read_text())
    reference = json.loads((whole.folder / "cv.json").read_text())
    for key in ("val_mean", "val_std", "test_mean", "ensemble_test"):
        assert done[key] == reference[key], key
    for fold in (1, 2, 3):
        epochs = [json.loads(line)["epoch"] for line in (cut / f"fold-{fold}" / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2]
