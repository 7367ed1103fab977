"""The commands on a run folder that `fpt train-side` or `fpt sweep` wrote: predict, explain, evaluate,
report, compare and export. pipeline/cli.py registers them.

Each command imports the stages it runs when it runs (pipeline/cli.py says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fpt.cache.errors import UserError
from fpt.pipeline.cli_options import (
    CheckpointOption, QuietOption, RunCacheOption, RunOption, SetOption, console, load_settings,
)


def _checkpoint(value: str) -> str:
    if value not in ("best", "last"):
        raise UserError(f"--checkpoint {value!r} is not a checkpoint.", "Use --checkpoint best or --checkpoint last.")
    return value


def predict(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images (searched recursively).")],
    run: Annotated[Optional[Path], typer.Option("--run", "-r", help="The run folder that `fpt train-side` wrote.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="A model export (`fpt export`) to use instead of a run: needs neither the run folder nor its cache.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="CSV to write (default: <run>/predict-<time>.csv, or ./predict-<time>.csv with --export).")] = None,
    checkpoint: CheckpointOption = "best",
    cache: RunCacheOption = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="With --export: a configuration file for the LPM's weights, device and batch size.")] = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Classify new images with a trained run (or an export): frozen LPM (checked by identity) + side network."""
    import datetime as dt

    from fpt.stages.inference.predict import predict_images, predict_with_export, write_prediction_csv
    from fpt.stages.runs.trained_run import read_run

    if (run is None) == (export is None):
        raise UserError("predict needs a model: a run folder (--run) or an export folder (--export), not both.",
                        "Give one of --run RUN_DIR or --export EXPORT_DIR.")
    stamp = f"predict-{dt.datetime.now():%Y%m%d-%H%M%S}.csv"
    if run is not None:
        predictions = predict_images(run, images, _checkpoint(checkpoint), set_, cache, show_progress=not quiet)  # type: ignore[arg-type]
        class_names, target = read_run(run).class_names, output or run / stamp
    else:
        assert export is not None
        settings = load_settings(config, set_, None, announce=False)
        predictions, class_names = predict_with_export(export, images, settings, show_progress=not quiet)
        target = output or Path(stamp)
    write_prediction_csv(target, predictions, class_names)
    counts: dict[str, int] = {}
    for item in predictions:
        counts[item.predicted] = counts.get(item.predicted, 0) + 1
    console.print(f"[green]{len(predictions)} image(s) classified[/green] ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}): {target}")


def explain(
    run: RunOption,
    images: Annotated[Optional[list[Path]], typer.Argument(help="New image files and/or folders, explained through the frozen LPM (default: images of the run's cache, without the LPM).")] = None,
    split: Annotated[str, typer.Option("--split", help="The cache's split to explain: train, val or test.")] = "test",
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="Only the split's first N images (in storage order).")] = None,
    gallery: Annotated[bool, typer.Option("--gallery", help="(Re)draw the report's gallery: a few test images per class, correct and wrong.")] = False,
    per_layer: Annotated[bool, typer.Option("--per-layer", help="Add a row of per-layer maps to each picture (maps.npz always holds them).")] = False,
    checkpoint: CheckpointOption = "best",
    cache: RunCacheOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Heatmaps of where the run's fusion prompts looked in each image, and which patches the LPM kept."""
    from fpt.stages.explain.explain_run import explain_cached, explain_images
    from fpt.stages.explain.gallery import write_gallery
    from fpt.stages.runs.explanation_record import EXPLAIN_FOLDER, GALLERY
    from fpt.stages.runs.report import write_report

    which = _checkpoint(checkpoint)
    if gallery:
        if images:
            raise UserError("--gallery draws test images of the run's cache, so it takes no image files.",
                            "Leave out either --gallery or the images.")
        record = write_gallery(run, show_progress=not quiet, originals=True)
        folder = run / EXPLAIN_FOLDER / GALLERY
        write_report(run)
    elif images:
        folder, record = explain_images(run, images, which, cache, set_, per_layer, show_progress=not quiet)  # type: ignore[arg-type]
    else:
        folder, record = explain_cached(run, split, which, limit=limit, cache=cache, assignments=set_,  # type: ignore[arg-type]
                                        per_layer=per_layer, show_progress=not quiet)
    console.print(f"[green]{len(record.images)} image(s) explained[/green] ({record.seconds_per_image:.2f} s each): "
                  f"pictures, maps.npz and explain.json in {folder}", highlight=False)
    if gallery:
        console.print(f"report: {run / 'report.md'}")


def evaluate(
    run: RunOption,
    split: Annotated[str, typer.Option("--split", help="train, val or test.")] = "test",
    checkpoint: CheckpointOption = "best",
    cache: RunCacheOption = None,
    set_: SetOption = None,
) -> None:
    """Recompute a run's metrics from its cache, write them (JSON) and redraw its report."""
    from fpt.stages.inference.evaluate import evaluate_run
    from fpt.stages.runs.metrics import is_binary, reported_scores, score_header

    result = evaluate_run(run, split, _checkpoint(checkpoint), cache, set_)  # type: ignore[arg-type]
    table = Table(title=f"{split}, {checkpoint} model, {result.num_samples} images")
    binary = is_binary(result.metrics)
    for column in ("score", "value", "95 % CI"):
        table.add_column(column, justify="left" if column == "score" else "right")
    for name in reported_scores(binary):
        table.add_row(score_header(name, binary), f"{getattr(result.metrics, name):.4f}",
                      _interval_cell(result.uncertainty.intervals.get(name)))
    console.print(table)
    settings = result.uncertainty.bootstrap
    console.print(f"Intervals: bootstrap percentiles, {settings.resamples} resamples of the images within each true "
                  f"class, seed {settings.seed}. Metrics, intervals and each class's sensitivity and specificity: "
                  f"{result.metrics_file}; report: {run / 'report.md'}", highlight=False)


def _interval_cell(interval: list[float | None] | None, signed: bool = False) -> str:
    """A score's 95 % interval in a table cell: 0.861-0.931, or a difference's: -0.012 to +0.034."""
    if not interval or interval[0] is None or interval[1] is None:
        return "n/a"
    if signed:
        return f"{interval[0]:+.3f} to {interval[1]:+.3f}"
    return f"{interval[0]:.3f}-{interval[1]:.3f}"


def report(
    runs: Annotated[list[Path], typer.Argument(help="Run folder(s) under train.runs_root (a sweep's trials included).")],
) -> None:
    """Draw a run's pictures (training curves, ROC, confusion matrices) and rewrite its report.md."""
    from fpt.stages.runs.report import write_report

    for run in runs:
        if not (run / "run.json").is_file():
            raise UserError(f"{run} is not a run folder (no run.json in it).",
                            "Give a folder written by `fpt train-side` or `fpt sweep` (see train.runs_root).")
        files = write_report(run)
        console.print(f"{run}: {len(files) - 1} picture(s), report {run / 'report.md'}")


def compare(
    run_a: Annotated[Path, typer.Argument(help="A run folder (A).")],
    run_b: Annotated[Path, typer.Argument(help="The run folder to compare it with (B), tested on the same images.")],
    split: Annotated[str, typer.Option("--split", help="The split compared: train, val or test.")] = "test",
    checkpoint: CheckpointOption = "best",
) -> None:
    """Is run A's AUC higher than run B's on the same images, or is it noise? (paired bootstrap; DeLong for 2 classes)"""
    from fpt.stages.runs.comparison import compare_runs

    result = compare_runs(run_a, run_b, split, _checkpoint(checkpoint))
    table = Table(title=f"AUC, {split} split ({result.num_samples} images), {checkpoint} models")
    table.add_column("")
    table.add_column("run", overflow="fold", max_width=34)
    table.add_column("AUC", justify="right")
    table.add_column("95 % CI", justify="right", no_wrap=True)
    table.add_row("A", run_a.name, f"{result.auc_a:.4f}", _interval_cell(result.auc_a_ci))
    table.add_row("B", run_b.name, f"{result.auc_b:.4f}", _interval_cell(result.auc_b_ci))
    table.add_row("A - B", "", f"{result.difference:+.4f}", _interval_cell(result.difference_ci, signed=True))
    console.print(table)
    settings = result.bootstrap
    floor = 2 / (settings.resamples + 1)
    bound = " (the smallest these resamples can give)" if result.p_value <= floor else ""
    console.print(f"Paired bootstrap, two-sided: p = {result.p_value:.4f}{bound}; {settings.resamples} resamples of "
                  f"the images within each true class, seed {settings.seed}.", highlight=False)
    if result.delong_p is not None:
        console.print(f"DeLong's test: z = {result.delong_z:.3f}, p = {result.delong_p:.4g}.", highlight=False)
    verdict = ("the 95 % interval of the difference leaves out 0" if result.p_value < 0.05 else
               "the difference is within the noise of this split (the 95 % interval holds 0)")
    console.print(f"At the 5 % level, {verdict}.", highlight=False)


def export_command(
    run: RunOption,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Folder to write (default: <run>/export).")] = None,
    checkpoint: CheckpointOption = "best",
    cache: RunCacheOption = None,
) -> None:
    """Export the side network + fusion weights (safetensors) with a JSON to rebuild them."""
    from fpt.stages.runs.export import export_run

    folder = export_run(run, _checkpoint(checkpoint), output, cache)  # type: ignore[arg-type]
    console.print(f"[green]Exported[/green] to {folder}; load it with "
                  f"`from fpt.stages.runs.export import load_exported; model = load_exported({str(folder)!r})`.")
