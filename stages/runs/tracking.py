"""What a training run reports as it goes: train.log always, TensorBoard scalars, MLflow when asked.

    <run>/train.log        one line per event (start, every epoch, test results, end), always written
    <run>/tensorboard/     TensorBoard event files (`tensorboard --logdir <runs_root>` shows every run)
    MLflow                 a run per trial in the experiment named after the dataset, when
                           train.loggers names `mlflow` (the `fpt[mlflow]` extra); a sweep is a parent
                           run with its trials as children

Scalars: train/loss, train/lr and epoch/seconds per epoch; val/<score> per epoch; test_best/<score>
and test_last/<score> once, at the last epoch. Logging is best effort by design: a tracker that
fails (an MLflow server down) is closed with a line in train.log and the training goes on.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from pathlib import Path
from typing import Any, Protocol

from fpt.cache.errors import UserError
from fpt.stages.runs.metrics import Metrics

TRAIN_LOG = "train.log"
TENSORBOARD_FOLDER = "tensorboard"
MLFLOW_EXTRA = 'pip install "fpt[mlflow]"'


def metric_values(metrics: Metrics) -> dict[str, float]:
    """The finite scores of `metrics` (None and NaN are left out: a tracker cannot plot them)."""
    return {name: float(value) for name, value in metrics.model_dump().items()
            if isinstance(value, (int, float)) and not math.isnan(value)}


def epoch_line(epoch: int, epochs: int, train_loss: float, lr: float, seconds: float, val: Metrics) -> str:
    """The one line an epoch gets in train.log and in a log file: epoch, losses, validation scores, time."""
    loss = "n/a" if val.loss is None else f"{val.loss:.4f}"
    return (f"epoch {epoch}/{epochs}  train loss {train_loss:.4f}  val loss {loss}  val AUC {val.auc:.4f}  "
            f"acc {val.accuracy:.4f}  kappa {val.kappa:.4f}  lr {lr:.2e}  {seconds:.1f} s")


class _Sink(Protocol):
    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class _TensorBoard:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only where a run asks for it

        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_FOLDER))

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, run_dir: Path, experiment: str, tracking_uri: str, parent_run_id: str | None,
                 params: dict[str, Any]) -> None:
        self.client = mlflow_client(tracking_uri)
        experiment_id = experiment_id_for(self.client, experiment)
        tags = {"fpt.run_dir": str(run_dir)}
        if parent_run_id is not None:
            tags["mlflow.parentRunId"] = parent_run_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags).info.run_id
        for name, value in params.items():
            self.client.log_param(self.run_id, name, value)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        for name, value in values.items():
            self.client.log_metric(self.run_id, f"{prefix}/{name}", value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def experiment_id_for(client: Any, name: str) -> str:
    """The id of the MLflow experiment `name`, created if it does not exist."""
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def mlflow_client(tracking_uri: str) -> Any:
    """An MlflowClient for `tracking_uri`, or the message that says how to install MLflow."""
    try:
        from mlflow.tracking import MlflowClient  # the optional extra: imported only where a run asks for MLflow
    except ImportError:
        raise UserError("train.loggers names mlflow, but MLflow is not installed.",
                        f"Install it with `{MLFLOW_EXTRA}`, or leave mlflow out of train.loggers.") from None
    return MlflowClient(tracking_uri=tracking_uri)


def parent_run(folder: Path, experiment: str, tracking_uri: str, name: str) -> str:
    """The MLflow run of a sweep (its trials are its children): the one recorded in `folder` by an earlier
    invocation of the same sweep, else a new one, recorded there."""
    record = folder / "mlflow_run_id.txt"
    if record.is_file():
        return record.read_text().strip()
    client = mlflow_client(tracking_uri)
    run_id = client.create_run(experiment_id_for(client, experiment), run_name=name,
                               tags={"fpt.sweep_dir": str(folder)}).info.run_id
    record.write_text(run_id)
    return run_id


def mlflow_uri(configured: str | None, runs_root: Path) -> str:
    """train.mlflow_uri, else MLFLOW_TRACKING_URI, else an SQLite database beside the run folders."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_mlflow_uri(runs_root)


def default_mlflow_uri(runs_root: Path) -> str:
    """Where MLflow runs go unless train.mlflow_uri (or MLFLOW_TRACKING_URI) says otherwise: an SQLite database
    beside the run folders (`mlflow ui --backend-store-uri` it), MLflow's own default backend since 3.7 (its
    file store is refused unless MLFLOW_ALLOW_FILE_STORE is set)."""
    return f"sqlite:///{(runs_root / 'mlflow.db').resolve()}"


class RunTracker:
    """One training run's log and trackers. Each method writes to every sink; a sink that fails is dropped
    (its failure noted in train.log), so tracking never stops a training run."""

    def __init__(self, run_dir: Path, loggers: list[str], experiment: str, mlflow_uri: str,
                 params: dict[str, Any], parent_run_id: str | None = None) -> None:
        self.run_dir = run_dir
        self.sinks: dict[str, _Sink] = {}
        if "tensorboard" in loggers:
            self.sinks["tensorboard"] = _TensorBoard(run_dir)
        if "mlflow" in loggers:
            self.sinks["mlflow"] = _MLflow(run_dir, experiment, mlflow_uri, parent_run_id, params)

    def line(self, text: str) -> None:
        """Append a time-stamped line to train.log."""
        with open(self.run_dir / TRAIN_LOG, "a") as handle:
            handle.write(f"{dt.datetime.now():%Y-%m-%d %H:%M:%S}  {text}\n")

    def epoch(self, epoch: int, epochs: int, train_loss: float, lr: float, seconds: float, val: Metrics) -> str:
        """Record an epoch; returns its line (for the console where output is a log file)."""
        text = epoch_line(epoch, epochs, train_loss, lr, seconds, val)
        self.line(text)
        self._each("train", {"loss": train_loss, "lr": lr}, epoch)
        self._each("epoch", {"seconds": seconds}, epoch)
        self._each("val", metric_values(val), epoch)
        return text

    def test(self, which: str, metrics: Metrics, epoch: int) -> None:
        values = metric_values(metrics)
        self.line(f"test, {which} model: " + "  ".join(f"{name} {value:.4f}" for name, value in values.items()))
        self._each(f"test_{which}", values, epoch)

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            self._guarded(name, sink.close)
        self.sinks.clear()

    def _each(self, prefix: str, values: dict[str, float], step: int) -> None:
        for name, sink in list(self.sinks.items()):
            self._guarded(name, sink.scalars, prefix, values, step)

    def _guarded(self, name: str, call: Any, *args: Any) -> None:
        try:
            call(*args)
        except Exception as error:  # a tracker's own failure (network, disk) must not stop training
            self.sinks.pop(name, None)
            self.line(f"{name} logging stopped: {type(error).__name__}: {error}")
