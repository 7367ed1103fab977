"""`fpt evaluate`: recompute a run's metrics on a split of its cache, with their bootstrap intervals and
each class's sensitivity and specificity (stages/runs/bootstrap.py), and redraw its report."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from fpt.cache.errors import UserError
from fpt.cache.reader import CacheReader
from fpt.stages.core.files import write_json
from fpt.stages.datasets.folds import split_samples
from fpt.stages.datasets.samples import SPLITS
from fpt.stages.extract.run import resolve_device
from fpt.stages.runs.bootstrap import Uncertainty, bootstrap_uncertainty
from fpt.stages.runs.metrics import Metrics, classification_metrics
from fpt.stages.runs.report import write_report
from fpt.stages.runs.run_folder import write_predictions
from fpt.stages.runs.trained_run import Checkpoint, load_run_model, read_run, run_cache_metadata, run_config
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.recipe import predict_split


class Evaluation(BaseModel):
    run_dir: Path
    cache: Path
    split: str
    checkpoint: str
    num_samples: int
    metrics: Metrics
    uncertainty: Uncertainty  # 95 % bootstrap intervals of the metrics, each class's sensitivity and specificity
    metrics_file: Path
    predictions_file: Path
    report_files: list[Path]


def evaluate_run(run_dir: Path, split: str = "test", checkpoint: Checkpoint = "best",
                 cache: Path | None = None, assignments: list[str] | None = None) -> Evaluation:
    if split not in SPLITS:
        raise UserError(f"There is no split called {split!r}.", f"Use one of {', '.join(SPLITS)}.")
    run = read_run(run_dir)
    config = run_config(run_dir, assignments)
    path, _ = run_cache_metadata(run, cache)
    reader = CacheReader(path, run.label_table)
    device = resolve_device(config.train.device)
    model = load_run_model(run_dir, run, checkpoint, device)
    batches = SplitBatches(reader, split_samples(reader, config.train, split), config.train.batch_size, shuffle=False,
                           with_features=run.model_spec.use_prompts)
    indices, labels, probabilities, loss = predict_split(model, batches, reader.metadata,
                                                         run.model_spec.side_input_size, device)
    metrics = classification_metrics(labels, probabilities, loss)
    uncertainty = bootstrap_uncertainty(labels, probabilities, run.class_names)
    sample_ids = reader.sample_ids()
    predictions_file = run_dir / f"predictions_{split}_{checkpoint}.csv"
    write_predictions(predictions_file, [sample_ids[i] for i in indices], labels, probabilities, run.class_names)
    metrics_file = run_dir / f"evaluation_{split}_{checkpoint}.json"
    write_json(metrics_file, {"split": split, "checkpoint": checkpoint, "cache": str(path),
                              "cache_key": run.cache_key, "num_samples": len(labels),
                              "metrics": metrics.model_dump(), "metrics_ci": uncertainty.intervals,
                              "per_class": [rates.model_dump() for rates in uncertainty.per_class],
                              "bootstrap": uncertainty.bootstrap.model_dump()})
    return Evaluation(run_dir=run_dir, cache=path, split=split, checkpoint=checkpoint, num_samples=len(labels),
                      metrics=metrics, uncertainty=uncertainty, metrics_file=metrics_file,
                      predictions_file=predictions_file, report_files=write_report(run_dir))
