"""Stage two: train the fusion modules and side network from the cache alone.

Neither the LPM nor the original images are touched: keys/values and the stored side images
come from the zarr cache. AdamW, half-cycle cosine per step without warm-up, gradient-norm
clipping, cross-entropy; the best epoch is chosen by validation AUC and the test metrics of
the best and of the final model are reported. `train_side` runs one trial as a pack of one
(stages/train/packed_training.py holds the loop; stages/train/recipe.py its pieces).
"""

from __future__ import annotations

import errno
from pathlib import Path

from fpt.cache.errors import UserError
from fpt.cache.progress import open_progress
from fpt.stages.core.errors import Interrupted
from fpt.stages.core.files import writable_folder
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.train.packed_training import Pack
from fpt.stages.train.recipe import TrainResult
from fpt.stages.train.resume_state import load_resume_state


def train_side(config: PipelineConfig, cache_path: Path | None = None, show_progress: bool = True,
               resume_run: Path | None = None) -> TrainResult:
    """One trial: a pack of one (stages/train/packed_training.py), so sweeps and single runs share one code path.

    The run keeps a resume state after every epoch; `resume_run` goes on with an interrupted run
    (its own resolved `config`, from its folder) from the end of its last finished epoch. Ctrl-C
    and a full disk end it with a message that says how to go on."""
    state = load_resume_state(resume_run) if resume_run is not None else None
    if resume_run is None:
        writable_folder(config.train.runs_root, "train.runs_root")
    pack: Pack | None = None
    with open_progress(show_progress, fields=("status",)) as progress:
        try:
            pack = Pack([config], cache_path, run_dirs=[resume_run] if resume_run is not None else None,
                        isolate_failures=False, progress=progress, resumable=True,
                        resume=None if state is None else [state])
            (outcome,) = pack.run()
        except KeyboardInterrupt:
            raise Interrupted(_how_to_go_on(pack, state, resume_run, config)) from None
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            where = pack.trials[0].run_dir if pack is not None else resume_run or config.train.runs_root
            raise UserError(f"The disk holding the run folder {where} is full.",
                            "Free some space, then: " + _how_to_go_on(pack, state, resume_run, config)) from None
    assert outcome.result is not None
    return outcome.result


def _how_to_go_on(pack: Pack | None, state: dict | None, resume_run: Path | None, config: PipelineConfig) -> str:
    """What a stopped run keeps and the command that continues it."""
    run_dir = pack.trials[0].run_dir if pack is not None else resume_run
    kept = max(pack.epochs_done if pack is not None else 0, state["epoch"] if state is not None else 0)
    if run_dir is None or kept == 0:
        where = "" if run_dir is None else f" {run_dir}"
        return f"The run{where} stopped before its first epoch ended; start it again."
    return (f"The run {run_dir} keeps its {kept} finished epoch(s) of {config.train.epochs}. "
            f"Go on with `fpt train-side --resume {run_dir}`.")
