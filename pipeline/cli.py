"""The `fpt` command line: the app, stage one and stage two's commands, sweeps, and the one place errors
become messages. The commands on a run folder are in pipeline/cli_runs.py, `fpt cache` in
pipeline/cli_cache.py, what they share in pipeline/cli_options.py.

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
from rich.markup import escape
from rich.table import Table

from fpt import __version__
from fpt.cache.errors import UserError
from fpt.cache.io_thread import stop_zarr_io_thread
from fpt.cache.progress import install_renderer
from fpt.pipeline.cli_cache import cache_app
from fpt.pipeline.cli_options import (
    ConfigOption, DataRootOption, DatasetOption, QuietOption, SchedulerOption, SetOption, console, error_console,
    load_settings,
)
from fpt.pipeline.cli_runs import compare, evaluate, explain, export_command, predict, report
from fpt.pipeline.config import config_files
from fpt.pipeline.progress_bars import renderer as progress_renderer
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.settings import PipelineConfig, config_to_yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="FPT+ as a two-stage pipeline: extract once, train the side network many times.")
app.add_typer(cache_app, name="cache")
config_app = typer.Typer(no_args_is_help=True, help="The configuration: which files are read, and what they resolve to.")
app.add_typer(config_app, name="config")


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
    settings = load_settings(config, set_, dataset, data_root, announce=False)
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

    cfg = load_settings(config, set_, dataset, data_root)
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
        cfg = load_settings(config, extra, dataset, data_root)
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


app.command()(predict)
app.command()(explain)
app.command()(evaluate)
app.command()(report)
app.command()(compare)
app.command("export")(export_command)


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
    cfg = load_settings(config, set_, dataset, data_root)
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

    cfg = load_settings(config, set_, None)
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
