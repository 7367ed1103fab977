"""The `fpt` command line.

Each command imports the stages it runs when it runs: importing all of them at once (torch, timm,
dask, matplotlib) takes about 7 s, which `fpt --help`, `fpt --version` and `fpt cache list`
should not wait for. These are not dodged circles: the layer contracts (pyproject.toml) check the
import graph with them included.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fpt import __version__
from fpt.cache.errors import UserError
from fpt.cache.io_thread import stop_zarr_io_thread
from fpt.cache.progress import install_renderer
from fpt.pipeline.config import config_files, load_config
from fpt.pipeline.progress_bars import renderer as progress_renderer
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.settings import PipelineConfig, config_to_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="FPT+ as a two-stage pipeline: extract once, train the side network many times.")
cache_app = typer.Typer(no_args_is_help=True, help="Inspect, check and re-encode the feature caches.")
app.add_typer(cache_app, name="cache")
config_app = typer.Typer(no_args_is_help=True, help="The configuration: which files are read, and what they resolve to.")
app.add_typer(config_app, name="config")
console = Console()
error_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="Configuration file layered over the shipped defaults (default: ./pipeline.yaml where there is one).")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set train.lr=1e-4 (repeatable).")]
DatasetOption = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name (see `fpt datasets`).")]
DataRootOption = Annotated[Optional[Path], typer.Option("--data-root", help="Folder of this dataset's files (sets dataset.path); a cache is used only for the images it was extracted from.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SchedulerOption = Annotated[Optional[str], typer.Option("--scheduler", help="Run on dask: tcp://HOST:PORT of a running scheduler, or 'local' for a LocalCluster (see docs/sweeps.md).")]


def _load(config: Path | None, assignments: list[str] | None, dataset: str | None, data_root: Path | None = None,
          announce: bool = True) -> PipelineConfig:
    """The command's settings; with `announce`, a line naming the configuration files read."""
    extra = list(assignments or [])
    if data_root is not None:
        extra.append(f"dataset.path={data_root}")
    settings = load_config(config, extra, dataset)
    if announce:
        console.print(f"[dim]Configuration: {', '.join(str(path) for path in config_files(config))}[/dim]",
                      highlight=False)
    return settings


def _version(value: bool) -> None:
    if value:
        console.print(f"fpt {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print fpt's version and exit.")] = False,
) -> None:
    """FPT+ as a two-stage pipeline: extract once, train the side network many times."""
    install_renderer(progress_renderer(console))


@config_app.command("show")
def config_show(dataset: DatasetOption = None, config: ConfigOption = None, set_: SetOption = None,
                data_root: DataRootOption = None) -> None:
    """Print the resolved configuration (defaults, files, the dataset's overrides and --set) as YAML."""
    settings = _load(config, set_, dataset, data_root, announce=False)
    print(f"# read: {', '.join(str(path) for path in config_files(config))}")
    print(config_to_yaml(settings), end="")


@app.command()
def extract(
    dataset: DatasetOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the whole dataset (counts, problems) without running the LPM.")] = False,
    scheduler: SchedulerOption = None,
) -> None:
    """Stage one: run the frozen LPM once over the images and fill the feature cache."""
    from fpt.cache.catalog import folder_bytes
    from fpt.pipeline.distributed_extract import run_extract

    cfg = _load(config, set_, dataset, data_root)
    if dry_run:
        from fpt.pipeline.dataset_report import print_dataset_report
        from fpt.stages.datasets.validate import validate_dataset
        from fpt.stages.extract.settings_check import check_before_scan

        check_before_scan(cfg)  # settings the LPM cannot serve, from its shape alone: no weights are loaded
        report = validate_dataset(cfg, show_progress=not quiet)
        print_dataset_report(report, console)
        raise typer.Exit(0 if report.ready else 1)
    result = run_extract(cfg, show_progress=not quiet, scheduler=scheduler)
    for note in result.notes:
        console.print(note, highlight=False)
    meta = result.metadata
    size = folder_bytes(result.path)
    if result.reused:
        console.print(f"[green]Cache is up to date[/green]: {result.path} (reused, nothing recomputed).")
    elif result.transcoded_from is not None:
        console.print(f"[green]Cache written[/green]: {result.path}, re-encoded from {result.transcoded_from}, "
                      "which holds the same features in other storage settings (the LPM was not run).")
    else:
        console.print(f"[green]Cache written[/green]: {result.path}")
    console.print(
        f"{meta.num_samples} images ({', '.join(f'{k} {v}' for k, v in meta.split_counts.items())}), "
        f"keys/values {meta.feature_shape} {meta.storage.dtype} per image, "
        f"{size / max(meta.num_samples, 1) / 1e6:.3f} MB per image on disk, {result.seconds:.1f} s."
    )


@app.command("train-side")
def train_side_command(
    from_cache: Annotated[bool, typer.Option("--from-cache", help="Train from the feature cache (the only mode; the LPM is never loaded).")] = True,
    dataset: DatasetOption = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="A specific cache store (default: the one extracted from this dataset's images with these settings).")] = None,
    no_prompts: Annotated[bool, typer.Option("--no-prompts", help="Train the side network alone (baseline).")] = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Go on with an interrupted run, or cross-validation: its folder (its own settings are used).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Stage two: train the fusion modules and side network from the cache of the dataset's images."""
    from fpt.stages.datasets.registry import dataset_source
    from fpt.stages.runs.metrics import is_binary, reported_scores, score_header
    from fpt.stages.train.cache_choice import find_cache
    from fpt.stages.train.train_side import train_side

    if not from_cache:
        raise UserError("train-side only trains from a cache.", "Run `fpt extract` first, then `fpt train-side --from-cache`.")
    if resume is not None:
        from fpt.stages.runs.trained_run import read_run, run_cache_metadata, run_config

        if set_ or no_prompts or config is not None or dataset is not None or data_root is not None:
            raise UserError("--resume goes on with a run exactly as it was started, so it takes no --set, "
                            "--no-prompts, --config, --dataset or --data-root.",
                            "Leave them out (the run's own config.yaml is used), or start a new run with them.")
        cfg = run_config(resume)
        if cfg.train.folds > 1 and cfg.train.fold is None:  # the folder of a whole cross-validation
            cache = find_cache(cfg, dataset_source(cfg), cache)
            console.print(f"Going on with the cross-validation in {resume} (cache {cache}).", highlight=False)
            _cross_validate(cfg, cache, quiet, resume)
            return
        run = read_run(resume)
        cache, _ = run_cache_metadata(run, cache)  # the very cache the run started on, checked by its key
        source = run.dataset_source or "a source it does not record"
    else:
        extra = list(set_ or [])
        if no_prompts:
            extra.append("side.use_prompts=false")
        cfg = _load(config, extra, dataset, data_root)
        source = dataset_source(cfg)
        cache = find_cache(cfg, source, cache)
    console.print(f"Training from the cache {cache} (dataset {cfg.dataset.name} from {source}).", highlight=False)
    if cfg.train.folds > 1 and cfg.train.fold is None:
        _cross_validate(cfg, cache, quiet)
        return
    result = train_side(cfg, cache, show_progress=not quiet, resume_run=resume)
    table = Table(title=f"Test metrics ({result.run_dir})")
    table.add_column("model")
    binary = is_binary(result.test_best)
    fields = reported_scores(binary)
    for name in fields:
        table.add_column(score_header(name, binary), justify="right")
    for label, metrics in ((f"best (epoch {result.best_epoch})", result.test_best), ("final", result.test_last)):
        table.add_row(label, *[f"{getattr(metrics, name):.4f}" for name in fields])
    console.print(table)
    console.print(f"{result.learnable_params:,} learnable parameters; {result.seconds:.1f} s; run folder {result.run_dir}",
                  soft_wrap=True)


def _cross_validate(cfg: PipelineConfig, cache: Path, quiet: bool, folder: Path | None = None) -> None:
    """train.folds > 1: one run per fold, then a table of each fold's best validation and test metrics,
    their mean ± std and the fold ensemble's test metrics."""
    from fpt.stages.runs.metrics import is_binary, reported_scores, score_header
    from fpt.stages.train.cross_validation import cross_validate

    result = cross_validate(cfg, cache, show_progress=not quiet, folder=folder)
    binary = is_binary(result.ensemble_test)
    fields = reported_scores(binary)
    for split, rows, mean, std in (
        ("Validation", [(f"fold {f.fold}, ep. {f.best_epoch}", f.best_val.model_dump()) for f in result.folds],
         result.val_mean, result.val_std),
        ("Test", [(f"fold {f.fold}", f.test_best.model_dump()) for f in result.folds], result.test_mean,
         result.test_std),
    ):
        table = Table(title=f"{split} metrics of the {len(result.folds)} folds' best models")
        table.add_column("model", no_wrap=True)
        for name in fields:
            table.add_column(score_header(name, binary), justify="right")
        for label, values in rows:
            table.add_row(label, *[f"{values[name]:.4f}" for name in fields])
        table.add_row("mean", *[f"{mean[name]:.4f}" for name in fields])
        table.add_row("± std", *[f"{std[name]:.4f}" for name in fields])
        if split == "Test":
            ensemble = result.ensemble_test
            table.add_row("ensemble", *[f"{getattr(ensemble, name):.4f}" for name in fields])
        console.print(table)
    console.print(f"{result.seconds:.1f} s; cross-validation folder {result.folder} (cv.json, report.md)", soft_wrap=True)


RunOption = Annotated[Path, typer.Option("--run", "-r", help="The run folder that `fpt train-side` wrote.")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="best (best validation AUC) or last (final epoch).")]
RunCacheOption = Annotated[Optional[Path], typer.Option("--cache", help="The run's cache, if it was moved (its key must match run.json).")]


def _checkpoint(value: str) -> str:
    if value not in ("best", "last"):
        raise UserError(f"--checkpoint {value!r} is not a checkpoint.", "Use --checkpoint best or --checkpoint last.")
    return value


@app.command()
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
        settings = _load(config, set_, None, announce=False)
        predictions, class_names = predict_with_export(export, images, settings, show_progress=not quiet)
        target = output or Path(stamp)
    write_prediction_csv(target, predictions, class_names)
    counts: dict[str, int] = {}
    for item in predictions:
        counts[item.predicted] = counts.get(item.predicted, 0) + 1
    console.print(f"[green]{len(predictions)} image(s) classified[/green] ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}): {target}")


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command("export")
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


@app.command()
def sweep(
    from_cache: Annotated[bool, typer.Option("--from-cache", help="Train every trial from the feature cache (the only mode; the LPM is never loaded).")] = True,
    sweep_file: Annotated[Optional[Path], typer.Option("--sweep-file", help="YAML file with the search space (default: the sweep: section of the configuration).")] = None,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="tcp://HOST:PORT of a running dask scheduler (default: a LocalCluster sized to this machine).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="At most this many local dask workers.")] = None,
    dataset: DatasetOption = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="A specific cache store (default: the one extracted from this dataset's images with these settings).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    data_root: DataRootOption = None,
    quiet: QuietOption = False,
) -> None:
    """Hyperparameter search from the cache: grid, random or Optuna trials on dask, packed on shared batches.

    Run the same command again after Ctrl-C, a kill or a crash: finished trials are skipped and the others go on from their last finished epoch."""
    from fpt.pipeline.sweep import load_sweep_file, run_sweep

    if not from_cache:
        raise UserError("sweep only trains from a cache.", "Run `fpt extract` first, then `fpt sweep --from-cache`.")
    cfg = _load(config, set_, dataset, data_root)
    search = load_sweep_file(sweep_file) if sweep_file is not None else cfg.sweep
    result = run_sweep(cfg, search, cache, scheduler=scheduler, max_workers=workers, show_progress=not quiet,
                       console=console)
    failed = sum(r.status == "failed" for r in result.reports)
    console.print(f"Results: {result.sweep_dir / 'results.csv'}; {len(result.reports)} trials, {failed} failed, "
                  f"{result.seconds:.1f} s on {result.plan.workers} worker(s).")
    went_on = [r for r in result.reports if r.resumed_from_epoch]
    if went_on:
        console.print(f"{len(went_on)} trial(s) went on from the epoch an interrupted run of this sweep had finished "
                      f"(epochs {', '.join(str(e) for e in sorted({r.resumed_from_epoch for r in went_on}))}).")
    if result.best is not None:
        console.print(f"Best settings ({result.sweep_dir / 'best.yaml'}), ready to paste into pipeline.yaml:")
        console.print(result.best_yaml, highlight=False, markup=False)


@app.command()
def datasets(config: ConfigOption = None, set_: SetOption = None) -> None:
    """List the datasets fpt knows and where each expects its files."""
    from fpt.stages.datasets.registry import REGISTRY, expected_location

    cfg = _load(config, set_, None)
    table = Table(title="Datasets")
    for column in ("name", "modality", "classes", "lr", "mean/std", "layout", "expected at"):
        table.add_column(column)
    for spec in REGISTRY.values():
        location = expected_location(spec, cfg)
        found = "" if spec.layout == "demo" else (" (found)" if location.exists() else " (missing)")
        classes = f"{len(spec.class_names)}: {', '.join(spec.class_names)}" if spec.class_names else "from files"
        table.add_row(spec.name, spec.modality, classes, f"{spec.default_lr:g}", spec.normalization, spec.layout,
                      f"{location}{found}")
    console.print(table)
    for layout, expects in {spec.layout: spec.expects for spec in REGISTRY.values()}.items():
        console.print(f"[bold]{layout}[/bold]: {expects}", highlight=False)
    console.print("Files are looked for in dataset.data_root/<name>; set dataset.path (or pass --data-root to "
                  "extract) for another folder. auto mean/std: computed from the train split at full resolution, stored in the cache.")


@cache_app.command("list")
def cache_list(config: ConfigOption = None, set_: SetOption = None) -> None:
    """List the caches under cache.root with their size and settings."""
    from fpt.cache.catalog import folder_bytes, list_caches
    from fpt.cache.label_table import table_digests

    cfg = _load(config, set_, None)
    caches = list_caches(cfg.cache.root)
    rows = []
    for path, meta, problem in caches:
        size = f"{folder_bytes(path) / 1e6:.1f} MB"
        if meta is None:
            rows.append((path.name, ["?"] * 7 + [size, problem or "unreadable"], ""))
            continue
        state = ("complete" if meta.complete else "INCOMPLETE") + ("" if meta.has_token_indices else ", no token indices")
        if meta.by_content:  # rows of image contents; `samples` counts the latest label table's
            state += f", {len(table_digests(path))} label table(s)"
        sources = ", ".join(meta.sources) or "not recorded (running `fpt extract` on the same images records it)"
        rows.append((path.name, [meta.dataset, meta.lpm.name, ",".join(map(str, meta.extraction.layers)),
                                 f"{meta.extraction.token_ratio:g}", meta.extraction.importance,
                                 f"{meta.storage.dtype}/{meta.storage.codec}", str(meta.num_samples), size, state],
                     sources))
    if console.width >= 120:  # a table where it fits; a store name is copied into commands, so never cut
        table = Table(title=f"Caches under {cfg.cache.root}")
        table.add_column("store", no_wrap=True, min_width=max([len(name) for name, _, _ in rows] + [5]))
        for column in ("dataset", "LPM", "layers", "ratio", "importance", "dtype", "samples", "size", "state"):
            table.add_column(column, overflow="fold")
        for name, cells, _ in rows:
            table.add_row(name, *cells)
        console.print(table)
        for name, _, sources in rows:
            if sources:
                console.print(f"{name}: images from {sources}", highlight=False, soft_wrap=True)
        return
    # a narrow terminal or a log file (80 columns): a few whole lines per store
    console.print(f"Caches under {cfg.cache.root}: {len(rows)}", highlight=False, soft_wrap=True)
    for name, cells, sources in rows:
        dataset, lpm, layers, ratio, importance, dtype, samples, size, state = cells
        console.print(f"\n{name}", highlight=False, soft_wrap=True)
        console.print(f"  {state}, {samples} images, {size}, {dtype}", highlight=False, soft_wrap=True)
        console.print(f"  {dataset}; {lpm}, layers {layers}, ratio {ratio}, {importance}", highlight=False,
                      soft_wrap=True)
        if sources:
            console.print(f"  images from {sources}", highlight=False, soft_wrap=True)


@cache_app.command("transcode")
def cache_transcode(
    path: Annotated[Path, typer.Argument(help="A complete cache store.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Re-write a cache in the storage settings of the configuration (cache.dtype, codec, shards), without the LPM."""
    from fpt.cache.catalog import folder_bytes
    from fpt.cache.reader import read_metadata
    from fpt.cache.transcode import transcode
    from fpt.stages.extract.settings_check import storage_settings

    cfg = _load(config, set_, None)
    storage = storage_settings(cfg.cache)
    # an incomplete source is refused by the reader inside transcode, with its own message
    written = transcode(path, cfg.cache.root, storage, show_progress=not quiet,
                        resume_command="the same `fpt cache transcode` command")
    if written.resolve() == path.resolve():
        console.print(f"{path} is already stored as {storage.dtype}/{storage.codec}: nothing to do.")
        return
    source = read_metadata(path)
    before, after = folder_bytes(path), folder_bytes(written)
    console.print(f"[green]Cache written[/green]: {written} ({storage.dtype}/{storage.codec}, {after / 1e6:.1f} MB; "
                  f"the source, {source.storage.dtype}/{source.storage.codec}, is {before / 1e6:.1f} MB and is kept).")


@cache_app.command("compact")
def cache_compact(
    path: Annotated[Path, typer.Argument(help="A complete cache store (format 4).")],
    table: Annotated[Optional[str], typer.Option("--table", help="The label table whose order to lay the rows out in (its sha256 or a prefix; default: the latest one written).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Lay a grown store's rows out again in a label table's order (each split consecutive, whole shards), without the LPM; resumable. Train from it afterwards, not during."""
    from fpt.cache.catalog import folder_bytes
    from fpt.cache.compact import compact

    result = compact(path, table, show_progress=not quiet)
    if result.already_compact:
        console.print(f"{path} is already laid out in the order of label table {result.label_table[:16]}: nothing to do.")
        return
    console.print(f"[green]Compacted[/green]: {path}, {result.rows_after} rows in the order of label table "
                  f"{result.label_table[:16]} (was {result.rows_before} rows; {folder_bytes(path) / 1e6:.1f} MB).",
                  highlight=False)


@cache_app.command("verify")
def cache_verify(
    path: Annotated[Optional[Path], typer.Argument(help="A cache store (default: every cache under cache.root).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Re-check every shard of a cache against the checksums recorded when it was written."""
    from fpt.cache.catalog import list_caches
    from fpt.cache.integrity import verify_store
    from fpt.cache.reader import read_metadata

    cfg = _load(config, set_, None)
    paths = [path] if path is not None else [p for p, _, _ in list_caches(cfg.cache.root)]
    if not paths:
        raise UserError(f"There is no cache under {cfg.cache.root}.", "Give the store's path: fpt cache verify PATH.")
    problems = []
    for store in paths:
        report = verify_store(store, read_metadata(store))
        for damaged in report.damaged:
            problems.append(
                f"{store.name} shard {damaged.shard} ({', '.join(damaged.arrays)}) is damaged: samples "
                + ", ".join(damaged.sample_ids)
            )
        if report.incomplete_shards:
            problems.append(f"{store.name} is incomplete: shards {report.incomplete_shards[:10]} are not written yet")
        if report.ok:
            console.print(f"[green]OK[/green] {store}: {report.shards_checked} shards match their checksums.")
    if problems:
        raise UserError(
            "Cache verification failed: " + "; ".join(problems) + ".",
            "Delete a damaged store and run `fpt extract` again (or finish an incomplete one by re-running it).",
        )


WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def write_failure(error: OSError) -> str:
    """One paragraph for a file that could not be written, where no command caught it with a message of
    its own: every file fpt writes goes to a temporary name first, so nothing finished is damaged."""
    what = str(error.filename) if error.filename else "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"The disk is full: {what} could not be written. Everything finished before is kept. "
                "Free some space, then run the same command again.")
    return (f"{what} cannot be written ({error.strerror}). Everything finished before is kept. Choose a folder "
            "you can write to (cache.root, train.runs_root or --output) or fix its permissions, then run the same "
            "command again.")


def _interrupted() -> None:
    error_console.print(
        "[bold yellow]Interrupted.[/bold yellow] Everything finished before the interruption is kept: "
        "completed cache shards, run folders and their checkpoints. Run the same command again to resume."
    )
    sys.exit(130)


def main() -> None:
    try:
        _run_app()
    finally:
        stop_zarr_io_thread()


def _run_app() -> None:
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n here
        # typer turns Ctrl-C inside a command into Exit(130), returned (not raised) in non-standalone mode.
        if code == 130:
            _interrupted()
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as error:
        # escaped: a message may hold brackets, e.g. pip install "fpt[dicom]", which rich would take for markup
        error_console.print(f"[bold red]Error:[/bold red] {escape(error.paragraph())}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        _interrupted()
    except Interrupted as interruption:
        error_console.print(f"[bold yellow]Interrupted.[/bold yellow] {escape(interruption.hint)}", highlight=False)
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except OSError as error:
        if error.errno not in WRITE_FAILURES:
            raise
        error_console.print(f"[bold red]Error:[/bold red] {write_failure(error)}", highlight=False)
        sys.exit(2)
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        if isinstance(error, click.exceptions.Exit):
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
