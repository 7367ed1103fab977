"""predict / evaluate / export / report on one tiny demo run (extract + train-side once per module)."""

from __future__ import annotations

import csv
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score
from tiny import TRAINING, tiny_config, trained_tiny_run
from typer.testing import CliRunner

from fpt.cache.errors import UserError
from fpt.cache.metadata import LPMIdentity
from fpt.cache.reader import CacheReader
from fpt.pipeline.cli import app
from fpt.stages.core.settings import LPMConfig
from fpt.stages.extract.run import run_extract
from fpt.stages.inference.predict import lpm_settings_for, predict_images
from fpt.stages.model.side_input import eval_images
from fpt.stages.runs.bootstrap import bootstrap_uncertainty
from fpt.stages.runs.export import load_exported
from fpt.stages.runs.run_folder import read_predictions
from fpt.stages.train.train_side import train_side

FLOAT16_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return trained_tiny_run(tmp_path_factory.mktemp("tiny"))


def read_probabilities(path: Path, key: str) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        return {row[key]: np.array([float(v) for k, v in row.items() if k.startswith("p_")])
                for row in csv.DictReader(handle)}


def test_predict_cli_reproduces_train_side_test_probabilities(run: dict[str, Path]) -> None:
    output = run["root"] / "predict.csv"
    result = CliRunner().invoke(app, ["predict", str(run["data"] / "test"), "--run", str(run["run"]),
                                      "--output", str(output), "--quiet"])
    assert result.exit_code == 0, result.output
    predicted = read_probabilities(output, "file")
    reference = read_probabilities(run["run"] / "predictions_test_best.csv", "sample_id")
    assert len(predicted) == len(reference) == 6
    for file, probabilities in predicted.items():
        sample_id = str(Path(file).relative_to(run["data"]))
        np.testing.assert_allclose(probabilities, reference[sample_id], atol=FLOAT16_TOLERANCE)
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    class_names = json.loads((run["run"] / "run.json").read_text())["class_names"]
    for row in rows:
        probabilities = [float(row[f"p_{name}"]) for name in class_names]
        assert row["predicted"] == class_names[int(np.argmax(probabilities))]


def test_predict_last_checkpoint_matches_its_own_predictions(run: dict[str, Path]) -> None:
    files = sorted((run["data"] / "test").rglob("*.png"))[:2]
    predictions = predict_images(run["run"], files, "last", show_progress=False)
    reference = read_probabilities(run["run"] / "predictions_test_last.csv", "sample_id")
    for item in predictions:
        expected = reference[str(Path(item.file).relative_to(run["data"]))]
        np.testing.assert_allclose(item.probabilities, expected, atol=FLOAT16_TOLERANCE)


def test_predict_refuses_an_lpm_with_another_seed(run: dict[str, Path]) -> None:
    image = next((run["data"] / "test").rglob("*.png"))
    with pytest.raises(UserError, match="random:0.*random:1"):
        predict_images(run["run"], [image], assignments=["lpm.init_seed=1"], show_progress=False)


def test_predict_refuses_an_lpm_from_another_weights_file(run: dict[str, Path]) -> None:
    import timm
    from safetensors.torch import save_file

    weights = run["root"] / "other_vit_tiny.safetensors"
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    image = next((run["data"] / "test").rglob("*.png"))
    with pytest.raises(UserError, match="weights_identity: cache has random:0, now sha256:"):
        predict_images(run["run"], [image], assignments=[f"lpm.weights={weights}"], show_progress=False)


def test_predict_reports_missing_and_undecodable_images(run: dict[str, Path]) -> None:
    with pytest.raises(UserError, match="does not exist"):
        predict_images(run["run"], [run["root"] / "nowhere"], show_progress=False)
    broken = run["root"] / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot be read"):
        predict_images(run["run"], [broken], show_progress=False)


def test_evaluate_recomputes_metrics_from_the_cache(run: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["evaluate", "--run", str(run["run"]), "--split", "val", "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    written = json.loads((run["run"] / "evaluation_val_last.json").read_text())
    assert written["split"] == "val" and written["num_samples"] == 6
    predictions = run["run"] / "predictions_val_last.csv"
    with open(predictions, newline="") as handle:
        rows = list(csv.DictReader(handle))
    labels = np.array([int(r["label"]) for r in rows])
    probabilities = np.array([[float(v) for k, v in r.items() if k.startswith("p_")] for r in rows])
    assert written["metrics"]["accuracy"] == pytest.approx(accuracy_score(labels, probabilities.argmax(1)))
    assert written["metrics"]["auc"] == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"), abs=1e-4)
    # The final epoch's validation metrics were logged by train-side with the same model.
    last_epoch = json.loads((run["run"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert written["metrics"]["accuracy"] == pytest.approx(last_epoch["val"]["accuracy"])
    assert written["metrics"]["auc"] == pytest.approx(last_epoch["val"]["auc"], abs=1e-6)
    assert (run["run"] / "roc_val_last.png").is_file() and (run["run"] / "confusion_val_last.png").is_file()
    assert "`fpt evaluate`: val, last model" in (run["run"] / "report.md").read_text()


def test_evaluate_rejects_an_unknown_split(run: dict[str, Path]) -> None:
    from fpt.stages.inference.evaluate import evaluate_run

    with pytest.raises(UserError, match="no split called 'dev'"):
        evaluate_run(run["run"], "dev")


def test_run_folder_has_readable_pictures_and_report(run: dict[str, Path]) -> None:
    report = (run["run"] / "report.md").read_text()
    final = json.loads((run["run"] / "final_metrics.json").read_text())
    assert f"| test, best-validation model | {final['test_best']['accuracy']:.4f} |" in report
    for name in ("training_curves.png", "roc_test_best.png", "confusion_test_best.png"):
        assert f"]({name})" in report
        with Image.open(run["run"] / name) as picture:
            assert picture.format == "PNG" and picture.width >= 400 and picture.height >= 300
            assert len(np.unique(np.asarray(picture.convert("L")))) > 10  # something is drawn


def test_checkpoints_have_the_permissions_of_the_other_run_files(run: dict[str, Path]) -> None:
    """safetensors writes owner-only files; a run folder's files all get the mode a new file gets."""
    expected = stat.S_IMODE((run["run"] / "config.yaml").stat().st_mode)
    for path in [*(run["run"] / "checkpoints").glob("*.safetensors"), *(run["run"] / "export").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_final_metrics_and_report_carry_bootstrap_intervals(run: dict[str, Path]) -> None:
    final = json.loads((run["run"] / "final_metrics.json").read_text())
    predictions = read_predictions(run["run"] / "predictions_test_best.csv")
    expected = bootstrap_uncertainty(np.array(predictions.labels), np.array(predictions.probabilities),
                                     predictions.class_names)
    assert set(final["test_best"]) >= {"accuracy", "macro_f1", "auc", "precision", "recall", "kappa"}  # kept as it was
    assert final["bootstrap"] == {"resamples": 2000, "seed": 0, "confidence": 0.95, "method": expected.bootstrap.method}
    for name, interval in expected.intervals.items():
        assert final["test_best_ci"][name] == pytest.approx(interval, abs=1e-6), name
    assert [rates["class_name"] for rates in final["test_last_per_class"]] == predictions.class_names
    assert final["test_best_per_class"] == [rates.model_dump() for rates in expected.per_class]

    report = (run["run"] / "report.md").read_text()
    low, high = final["test_best_ci"]["accuracy"]
    assert f"| test, best-validation model | {final['test_best']['accuracy']:.3f} ({low:.3f}-{high:.3f}) |" in report
    assert "2000 resamples (seed 0)" in report and "| class | images | sensitivity | specificity |" in report
    first = final["test_best_per_class"][0]
    assert f"| {first['class_name']} | {first['images']} | " in report


def test_exported_model_reproduces_train_side_probabilities(run: dict[str, Path]) -> None:
    model = load_exported(run["run"] / "export")
    manifest = model.manifest
    assert manifest.checkpoint == "best" and manifest.lpm.weights_identity == "random:0"
    reader = CacheReader(run["cache"])
    assert manifest.cache_key == reader.metadata.cache_key
    start, stop = reader.split_range("test")
    arrays = reader.read(start, stop)
    images = eval_images(arrays["side_images"], manifest.side_input_size, manifest.normalization.mean,
                         manifest.normalization.std)
    with torch.no_grad():
        probabilities = model(images, torch.from_numpy(arrays["keys"]).float(),
                              torch.from_numpy(arrays["values"]).float()).softmax(-1).numpy()
    reference = read_probabilities(run["run"] / "predictions_test_best.csv", "sample_id")
    ids = reader.sample_ids()[start:stop]
    np.testing.assert_allclose(probabilities, np.stack([reference[i] for i in ids]), atol=1e-5)


def test_predict_from_an_export_alone(tmp_path: Path) -> None:
    """With the run folder and the cache deleted, the export alone classifies the test images as train-side did."""
    config = tiny_config(tmp_path, *TRAINING)
    run_extract(config, show_progress=False)
    result = train_side(config, show_progress=False)
    export = tmp_path / "shipped"
    shutil.copytree(result.run_dir / "export", export)
    reference = read_probabilities(result.run_dir / "predictions_test_best.csv", "sample_id")
    shutil.rmtree(result.run_dir)
    shutil.rmtree(result.cache)
    output = tmp_path / "predicted.csv"
    outcome = CliRunner().invoke(app, ["predict", str(tmp_path / "data" / "demo" / "test"), "--export", str(export),
                                       "--output", str(output), "--quiet", "--set", "extract.device=cpu"])
    assert outcome.exit_code == 0, outcome.output
    predicted = read_probabilities(output, "file")
    assert len(predicted) == len(reference) == 6
    for file, probabilities in predicted.items():
        np.testing.assert_allclose(probabilities, reference[str(Path(file).relative_to(tmp_path / "data" / "demo"))],
                                   atol=FLOAT16_TOLERANCE)


def test_predict_from_an_export_of_file_weights_needs_the_file() -> None:
    identity = LPMIdentity(name="vit_tiny_patch16_224", weights_source="file", weights_identity="sha256:" + "ab" * 32,
                           embed_dim=192, num_heads=3, head_dim=64, patch_size=16, depth=12, num_prefix_tokens=1,
                           num_params=5_000_000)
    with pytest.raises(UserError, match="lpm.weights=/path"):
        lpm_settings_for(LPMConfig(weights="hub"), identity, Path("export"))
    chosen = lpm_settings_for(LPMConfig(weights="/data/encoder.pth", name="other"), identity, Path("export"))
    assert chosen.weights == "/data/encoder.pth" and chosen.name == "vit_tiny_patch16_224"
    random = identity.model_copy(update={"weights_source": "none", "weights_identity": "random:7"})
    assert lpm_settings_for(LPMConfig(), random, Path("export")).model_dump() == \
        LPMConfig(name="vit_tiny_patch16_224", weights="none", init_seed=7).model_dump()
