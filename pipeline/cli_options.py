"""What the `fpt` commands share: the consoles they print to, their common options, and reading the
configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from fpt.pipeline.config import config_files, load_config
from fpt.stages.core.settings import PipelineConfig

console = Console()
error_console = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="Configuration file layered over the shipped defaults (default: ./pipeline.yaml where there is one).")]
SetOption = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a setting: --set train.lr=1e-4 (repeatable).")]
DatasetOption = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset name (see `fpt datasets`).")]
DataRootOption = Annotated[Optional[Path], typer.Option("--data-root", help="Folder of this dataset's files (sets dataset.path); a cache is used only for the images it was extracted from.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SchedulerOption = Annotated[Optional[str], typer.Option("--scheduler", help="Run on dask: tcp://HOST:PORT of a running scheduler, or 'local' for a LocalCluster (see docs/sweeps.md).")]

RunOption = Annotated[Path, typer.Option("--run", "-r", help="The run folder that `fpt train-side` wrote.")]
CheckpointOption = Annotated[str, typer.Option("--checkpoint", help="best (best validation AUC) or last (final epoch).")]
RunCacheOption = Annotated[Optional[Path], typer.Option("--cache", help="The run's cache, if it was moved (its key must match run.json).")]


def load_settings(config: Path | None, assignments: list[str] | None, dataset: str | None,
                  data_root: Path | None = None, announce: bool = True) -> PipelineConfig:
    """The command's settings; with `announce`, a line naming the configuration files read."""
    extra = list(assignments or [])
    if data_root is not None:
        extra.append(f"dataset.path={data_root}")
    settings = load_config(config, extra, dataset)
    if announce:
        console.print(f"[dim]Configuration: {', '.join(str(path) for path in config_files(config))}[/dim]",
                      highlight=False)
    return settings
