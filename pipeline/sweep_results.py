"""What a sweep writes about its trials: results.csv, the terminal's table, and best.yaml with the
command that trains the best trial again.

Trials are ranked by their best validation `sweep.metric` (of a cross-validated trial, the mean over
its folds), finished ones first, then pruned ones, failed ones last.
"""

from __future__ import annotations

import csv
import math
import shlex
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from fpt.cache.errors import UserError
from fpt.pipeline.trial_reports import CV_FILE, TrialReport
from fpt.stages.core.files import replacing
from fpt.stages.core.settings import set_in
from fpt.stages.runs.metrics import is_binary, reported_scores
from fpt.stages.runs.trained_run import read_run


def repeat_lines(run_dir: Path) -> list[str]:
    """How to train a sweep's trial again on its own, and how exactly that repeats it: bit for bit
    only where the trial ran on one CPU thread (docs/sweeps.md, "Packed trials"). A cross-validated trial's
    folder holds the config.yaml of its whole cross-validation."""
    try:
        run = read_run(run_dir / "fold-1" if (run_dir / CV_FILE).is_file() else run_dir)
    except UserError:
        return []
    command = f"fpt train-side --config {shlex.quote(str(run_dir.resolve() / 'config.yaml'))} --cache {shlex.quote(str(run.cache))}"
    if run.device == "cpu" and run.torch_threads == 1:
        return [f"repeat it bit for bit: OMP_NUM_THREADS=1 {command}"]
    lines = [f"repeat it: {command}"]
    if run.device is not None:
        threads = f", {run.torch_threads} torch threads" if run.device == "cpu" else ""
        lines.append(f"(it trained on {run.device}{threads} in a pack; alone it agrees to float rounding, "
                     "which training amplifies: docs/sweeps.md, \"Packed trials\")")
    return lines


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text and text.strip() else ""


def nested_settings(settings: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in sorted(settings.items()):
        set_in(tree, path.split("."), value)
    return tree


def sort_key(metric: str = "auc"):
    """Trials in order: finished ones by their best validation `metric` (loss: lowest first), then by test AUC;
    then pruned ones, the same way; failed ones last."""
    sign = 1.0 if metric == "loss" else -1.0

    def key(report: TrialReport) -> tuple:
        value = (report.best_val or {}).get(metric, report.val_auc if metric == "auc" else None)
        value = math.inf if value is None or math.isnan(value) else sign * value
        test = (report.test_best or {}).get("auc", -math.inf)
        test = -math.inf if test is None or math.isnan(test) else test
        return ({"failed": 2, "pruned": 1}.get(report.status, 0), value, -test, report.trial_id)

    return key


def write_results_csv(path: Path, reports: list[TrialReport]) -> None:
    names = sorted({name for r in reports for name in r.settings})
    scores = reported_scores(any(is_binary(r.test_best) for r in reports if r.test_best))
    folded = any(r.folds for r in reports)  # cross-validated: val_auc is the folds' mean, test the fold ensemble's
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "trial", "status", *names, "val_auc", *(["val_auc_std", "folds"] if folded else []),
                         "best_epoch", "epochs_trained",
                         *[f"test_best_{m}" for m in scores], *[f"test_last_{m}" for m in scores],
                         "resumed_from_epoch", "seconds", "run_dir", "error"])
        for rank, r in enumerate(reports, 1):
            writer.writerow([
                rank, r.trial_id, r.status, *[r.settings.get(n, "") for n in names],
                "" if r.val_auc is None else f"{r.val_auc:.6f}",
                *([_std(r, "auc"), r.folds or ""] if folded else []), r.best_epoch or "", r.epochs_trained or "",
                *[f"{(r.test_best or {}).get(m, float('nan')):.6f}" if r.test_best else "" for m in scores],
                *[f"{(r.test_last or {}).get(m, float('nan')):.6f}" if r.test_last else "" for m in scores],
                r.resumed_from_epoch or "", "" if r.seconds is None else f"{r.seconds:.2f}", str(r.run_dir),
                _first_line(r.error),
            ])


def _std(report: TrialReport, metric: str) -> str:
    value = (report.val_std or {}).get(metric)
    return "" if value is None else f"{value:.6f}"


def results_table(reports: list[TrialReport], title: str) -> Table:
    names = sorted({name for r in reports for name in r.settings})
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("trial", no_wrap=True, min_width=12)
    table.add_column("status")
    for column in (*names, "val AUC", "test AUC", "test acc", "test kappa", "test AUC (last)"):
        table.add_column(column, justify="right")
    any_failed = any(r.status == "failed" for r in reports)
    if any_failed:
        table.add_column("error", overflow="fold", max_width=48)

    def fmt(value: float | None, std: float | None = None) -> str:
        return "-" if value is None else f"{value:.4f}" + ("" if std is None else f" ± {std:.4f}")

    for rank, r in enumerate(reports, 1):
        best, last = r.test_best or {}, r.test_last or {}
        style = "red" if r.status == "failed" else ("bold green" if rank == 1 else None)
        table.add_row(str(rank), r.trial_id, r.status, *[str(r.settings.get(n, "")) for n in names],
                      fmt(r.val_auc, (r.val_std or {}).get("auc")), fmt(best.get("auc")), fmt(best.get("accuracy")), fmt(best.get("kappa")),
                      fmt(last.get("auc")), *([_first_line(r.error)] if any_failed else []), style=style)
    return table


def best_yaml_text(best: TrialReport, metric: str, sweep_name: str) -> str:
    """best.yaml: the best trial's settings as YAML to paste into pipeline.yaml, under comments giving its
    score and the command that trains it again."""
    value = (best.best_val or {}).get(metric, best.val_auc)
    score = f"validation {metric} {value:.4f}"
    if best.folds:
        score += (f" ± {(best.val_std or {}).get(metric, math.nan):.4f} "
                  f"(mean ± std of its {best.folds} cross-validation folds)")
    return (f"# best of sweep {sweep_name}: trial {best.trial_id}, {score}\n"
            + "".join(f"# {line}\n" for line in repeat_lines(best.run_dir))
            + yaml.safe_dump(nested_settings(best.settings), sort_keys=True))
