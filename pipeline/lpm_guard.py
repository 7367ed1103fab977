"""Making sure stage two never builds the LPM: timm model creation is switched off in-process.

Sweeps train inside `lpm_disabled()` in every process that trains (the client and each dask worker), so
a code path that tried to load the large model would fail loudly instead of silently spending
GPU memory and time, or reaching for weights that are not there.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import timm
import timm.models

import fpt.stages.lpm.build

FORBID_ENV = "FPT_FORBID_LPM"


class LPMForbidden(RuntimeError):
    pass


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise LPMForbidden(
        "timm model creation is disabled in this process: stage two trains from the cache only "
        f"(asked for {args[0] if args else kwargs.get('model_name')!r})."
    )


_lock = threading.Lock()
_depth = 0
_saved: tuple = ()


@contextmanager
def lpm_disabled() -> Iterator[None]:
    """Within this block, timm.create_model and fpt.stages.lpm.build.build_lpm raise LPMForbidden.

    Re-entrant and thread-safe (dask threads may overlap): the originals come back when the
    last block exits.
    """
    global _depth, _saved
    with _lock:
        if _depth == 0:
            _saved = (timm.create_model, timm.models.create_model, fpt.stages.lpm.build.build_lpm, os.environ.get(FORBID_ENV))
            timm.create_model = _refuse
            timm.models.create_model = _refuse
            fpt.stages.lpm.build.build_lpm = _refuse  # type: ignore[assignment]
            os.environ[FORBID_ENV] = "1"
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                timm.create_model, timm.models.create_model, fpt.stages.lpm.build.build_lpm = _saved[:3]
                if _saved[3] is None:
                    os.environ.pop(FORBID_ENV, None)
                else:
                    os.environ[FORBID_ENV] = _saved[3]


def lpm_forbidden() -> bool:
    return timm.create_model is _refuse
