"""fpt: FPT+ as a feature-caching two-stage pipeline.

The public API, for scripts and notebooks (the command line `fpt` does the same):

    import fpt
    config = fpt.load_config(dataset="demo", assignments=["train.epochs=5"])
    store = fpt.extract(config).path                 # stage one: the frozen LPM, once
    result = fpt.train_side(config, store)           # stage two, from the cache
    model = fpt.load_exported("outputs/export/...")  # a model written by `fpt export`

Layers, each importing only those below it: `fpt.pipeline` (command line, configuration files,
dask) -> `fpt.stages` (the two stages and what they need) -> `fpt.cache` (the store).
The names below are resolved on first use, so that importing one layer (say `fpt.cache`) does
not load torch and timm for the others.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("fpt")
except PackageNotFoundError:  # run from a checkout that was not installed
    __version__ = "0+unknown"

_API = {
    "load_config": ("fpt.pipeline.config", "load_config"),
    "extract": ("fpt.stages.extract.run", "run_extract"),
    "train_side": ("fpt.stages.train.train_side", "train_side"),
    "cross_validate": ("fpt.stages.train.cross_validation", "cross_validate"),
    "sweep": ("fpt.pipeline.sweep", "run_sweep"),
    "evaluate": ("fpt.stages.inference.evaluate", "evaluate_run"),
    "predict": ("fpt.stages.inference.predict", "predict_images"),
    "explain": ("fpt.stages.explain.explain_run", "explain_cached"),
    "explain_images": ("fpt.stages.explain.explain_run", "explain_images"),
    "load_exported": ("fpt.stages.runs.export", "load_exported"),
    "compare": ("fpt.stages.runs.comparison", "compare_runs"),
    "UserError": ("fpt.cache.errors", "UserError"),
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'fpt' has no attribute {name!r}")
    module, attribute = _API[name]
    return getattr(importlib.import_module(module), attribute)
