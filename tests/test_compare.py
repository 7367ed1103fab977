"""`fpt compare` on run folders whose predictions CSVs are written by hand (no training): a run against
itself, a clearly better and a slightly different model, runs tested on other images, and DeLong's
test against its structural components counted pair by pair."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.pipeline.cli import app
from fpt.stages.runs.comparison import compare_runs, delong_test
from fpt.stages.runs.run_folder import write_predictions

N = 200


def _run(root: Path, name: str, labels: np.ndarray, positive: np.ndarray, ids: list[str] | None = None,
         which: str = "test_best") -> Path:
    """A run folder holding only predictions_<which>.csv (and a run.json naming it a run)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"class_names": ["benign", "malignant"]}))
    ids = ids or [f"img{i:04d}" for i in range(len(labels))]
    write_predictions(folder / f"predictions_{which}.csv", ids, labels, np.stack([1 - positive, positive], axis=1),
                      ["benign", "malignant"])
    return folder


def _scores(labels: np.ndarray, signal: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=len(labels))
    return 1 / (1 + np.exp(-(noise + signal * (2 * labels - 1))))


@pytest.fixture()
def labels() -> np.ndarray:
    return np.random.default_rng(0).permutation(np.repeat([0, 1], N // 2))


def test_a_run_compared_with_itself_differs_by_nothing(tmp_path: Path, labels: np.ndarray) -> None:
    run = _run(tmp_path, "a", labels, _scores(labels, 0.7, 1))
    result = compare_runs(run, run)
    assert result.difference == 0 and result.difference_ci == [0, 0]
    assert result.p_value == 1.0 and result.delong_p == 1.0


def test_a_clearly_better_model_has_a_small_p_value(tmp_path: Path, labels: np.ndarray) -> None:
    good = _run(tmp_path, "good", labels, _scores(labels, 1.5, 1))
    weak = _run(tmp_path, "weak", labels, _scores(labels, 0.2, 2))
    result = compare_runs(good, weak)
    assert result.difference > 0.2 and result.difference_ci[0] > 0
    assert result.p_value < 0.01 and result.delong_p < 0.01
    assert compare_runs(weak, good).difference == pytest.approx(-result.difference)


def test_runs_listing_the_same_images_in_another_order_are_matched(tmp_path: Path, labels: np.ndarray) -> None:
    a, b = _scores(labels, 0.7, 1), _scores(labels, 0.7, 5)  # equal models, their noise apart
    ids = [f"img{i:04d}" for i in range(N)]
    order = np.random.default_rng(3).permutation(N)
    straight = compare_runs(_run(tmp_path, "a", labels, a), _run(tmp_path, "b", labels, b))
    shuffled = compare_runs(_run(tmp_path, "a2", labels, a),
                            _run(tmp_path, "b2", labels[order], b[order], [ids[i] for i in order]))
    assert shuffled.model_dump(exclude={"run_a", "run_b"}) == straight.model_dump(exclude={"run_a", "run_b"})
    # two equally good models on 200 images: both tests call the difference noise, and roughly agree
    assert straight.p_value > 0.05 and abs(straight.p_value - straight.delong_p) < 0.1


def test_runs_tested_on_other_images_or_labels_are_refused(tmp_path: Path, labels: np.ndarray) -> None:
    a = _run(tmp_path, "a", labels, _scores(labels, 0.7, 1))
    other_ids = [f"img{i:04d}" for i in range(N - 1)] + ["elsewhere.png"]
    b = _run(tmp_path, "b", labels, _scores(labels, 0.7, 2), other_ids)
    with pytest.raises(UserError, match=r"not tested on the same images: 1 of the test split's images are only in the "
                                        r"first \(img0199\) and 1 only in the second \(elsewhere.png\)"):
        compare_runs(a, b)
    flipped = labels.copy()
    flipped[:3] = 1 - flipped[:3]
    c = _run(tmp_path, "c", flipped, _scores(labels, 0.7, 2))
    with pytest.raises(UserError, match="give 3 of the same test images different labels"):
        compare_runs(a, c)
    with pytest.raises(UserError, match=r"fpt evaluate --run .* --split val --checkpoint last"):
        compare_runs(a, c, split="val", checkpoint="last")


def test_the_cli_prints_an_80_column_table_and_refuses_in_one_paragraph(tmp_path: Path, labels: np.ndarray) -> None:
    good = _run(tmp_path, "good-run-with-a-long-name-20260101-120000-fptplus", labels, _scores(labels, 1.5, 1))
    weak = _run(tmp_path, "weak", labels, _scores(labels, 0.2, 2))
    result = CliRunner().invoke(app, ["compare", str(good), str(weak)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80
    assert "A - B" in result.output and "Paired bootstrap, two-sided: p = 0.0010" in result.output
    assert "DeLong's test" in result.output and "leaves out 0" in result.output

    moved = _run(tmp_path, "moved", labels, _scores(labels, 0.7, 2), [f"other{i}" for i in range(N)])
    refused = CliRunner().invoke(app, ["compare", str(good), str(moved)], env={"COLUMNS": "80"})
    assert refused.exit_code != 0 and isinstance(refused.exception, UserError)
    assert "not tested on the same images" in str(refused.exception)


def _pairwise_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 and V01 counted pair by pair: psi(x, y) = 1 if x > y, 1/2 if equal, 0 otherwise."""
    positives, negatives = scores[labels == 1], scores[labels == 0]
    psi = [[1.0 if x > y else 0.5 if x == y else 0.0 for y in negatives] for x in positives]
    matrix = np.array(psi)
    return matrix.mean(axis=1), matrix.mean(axis=0)


def test_delong_equals_its_definition_from_pairwise_structural_components() -> None:
    rng = np.random.default_rng(11)
    labels = rng.permutation(np.repeat([0, 1], [37, 23]))
    a = (rng.normal(size=60) + labels).round(1)  # rounded: ties between positives and negatives
    b = (rng.normal(size=60) + 0.4 * labels + 0.5 * a).round(1)
    (v10_a, v01_a), (v10_b, v01_b) = _pairwise_components(labels, a), _pairwise_components(labels, b)
    m, n = len(v10_a), len(v01_a)

    def covariance(x: np.ndarray, y: np.ndarray) -> float:
        return float(((x - x.mean()) * (y - y.mean())).sum() / (len(x) - 1))

    variance = (covariance(v10_a, v10_a) + covariance(v10_b, v10_b) - 2 * covariance(v10_a, v10_b)) / m \
        + (covariance(v01_a, v01_a) + covariance(v01_b, v01_b) - 2 * covariance(v01_a, v01_b)) / n
    z = (v10_a.mean() - v10_b.mean()) / math.sqrt(variance)
    got = delong_test(labels, a, b)
    assert got is not None
    assert got[0] == pytest.approx(z, rel=1e-10) and got[1] == pytest.approx(2 * norm.sf(abs(z)), rel=1e-10)


def test_a_multiclass_comparison_has_no_delong_test(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1, 2], 40)
    folders = []
    for name, signal in (("a", 2.0), ("b", 0.1)):
        logits = rng.normal(size=(120, 3))
        logits[np.arange(120), labels] += signal
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        folder = tmp_path / name
        folder.mkdir()
        write_predictions(folder / "predictions_test_best.csv", [f"i{k}" for k in range(120)], labels, probabilities,
                          ["x", "y", "z"])
        folders.append(folder)
    result = compare_runs(*folders)
    assert result.delong_p is None and result.p_value < 0.01 and result.difference_ci[0] > 0
