"""Which configuration files a command reads, and the settings they give.

The defaults ship inside the package (`pipeline.yaml`, read with importlib.resources), so fpt
behaves the same from any folder. A `pipeline.yaml` in the working directory, or the file given
with `--config`, is layered on top. Each file's `overrides.<dataset>` section refines that file's
own values, and a later file's values win over an earlier file's, overrides included: the demo's
shipped tiny LPM applies unless your file names another, and a run folder's resolved config.yaml
(which has no overrides section) gives back exactly that run's settings. The `--set` options apply
last (stages/core/settings.py).
"""

from __future__ import annotations

from importlib.resources import as_file, files
from pathlib import Path

from fpt.stages.core.settings import (
    DatasetConfig, PipelineConfig, deep_merge, parse_assignment, read_yaml_file, set_in, settings_from,
)

LOCAL_CONFIG_FILE = Path("pipeline.yaml")


def shipped_config_file() -> Path:
    """The default configuration inside the installed package."""
    with as_file(files("fpt") / "pipeline.yaml") as path:
        return Path(path)


def config_files(config_file: Path | None = None) -> list[Path]:
    """The files a command reads, in order: the shipped defaults, then `--config FILE` or, without
    one, ./pipeline.yaml where it exists (and is not the shipped file itself, as in a checkout)."""
    shipped = shipped_config_file()
    chosen = [shipped]
    extra = config_file if config_file is not None else (LOCAL_CONFIG_FILE if LOCAL_CONFIG_FILE.is_file() else None)
    if config_file is not None or (extra is not None and extra.resolve() != shipped.resolve()):
        chosen.append(extra)  # type: ignore[arg-type]
    return chosen


def load_config(config_file: Path | None = None, assignments: list[str] | None = None,
                dataset: str | None = None) -> PipelineConfig:
    """The settings of `config_files(config_file)`, each with its own overrides for the dataset, then
    the `--set` assignments."""
    paths = config_files(config_file)
    layers = [read_yaml_file(path) for path in paths]
    name = dataset_name(layers, assignments, dataset)
    tree: dict = {}
    for layer in layers:
        own = (layer.get("overrides") or {}).get(name)
        tree = deep_merge(tree, deep_merge(layer, own) if isinstance(own, dict) else layer)
    set_in(tree, ["dataset", "name"], name)
    # the overrides applied above belong to their files; the settings keep the top file's own section
    tree["overrides"] = layers[-1].get("overrides") or {}
    return settings_from(tree, " and ".join(str(path) for path in paths), assignments)


def dataset_name(layers: list[dict], assignments: list[str] | None, dataset: str | None) -> str:
    """The dataset the command runs on: --dataset, else a --set dataset.name=..., else the last file's
    that names one, else the settings' default."""
    if dataset is not None:
        return dataset
    for path, value in reversed([parse_assignment(text) for text in assignments or []]):
        if path == ["dataset", "name"]:
            return str(value)
    for layer in reversed(layers):
        name = (layer.get("dataset") or {}).get("name")
        if name is not None:
            return str(name)
    return DatasetConfig().name
