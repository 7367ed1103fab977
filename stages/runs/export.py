"""Exporting a trained run's stage-two model (side network + fusion) for use from Python.

An export is a folder with `model.safetensors` (the weights) and `model.json` (an
ExportManifest: the ModelSpec, class names, normalisation, side image sizes, and the cache
and LPM identity the features must come from). Load it with one call:

    import fpt
    model = fpt.load_exported("outputs/runs/<run>/export")   # FPTPlus in eval mode
    model.manifest.class_names                           # what the logits mean
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file

from fpt.cache.errors import UserError
from fpt.cache.metadata import ExtractionSettings, LPMIdentity, Normalization
from fpt.stages.core.files import copy_file, writable_folder, write_json
from fpt.stages.model.fpt_model import FPTPlus, ModelSpec
from fpt.stages.runs.trained_run import Checkpoint, checkpoint_path, read_run, run_cache_metadata

EXPORT_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "model.json"


class ExportManifest(BaseModel):
    """Everything needed to rebuild the model and feed it correctly."""

    format_version: int = EXPORT_FORMAT_VERSION
    run: str
    checkpoint: str
    model_spec: ModelSpec
    class_names: list[str]
    normalization: Normalization
    side_input_size: int
    side_store_size: int  # side images are resized to this, then to side_input_size (as in training)
    cache_key: str
    lpm: LPMIdentity  # the frozen LPM whose keys/values the fusion modules expect
    extraction: ExtractionSettings
    storage_dtype: str  # features were rounded to this dtype in the cache


class ExportedFPTPlus(FPTPlus):
    """FPTPlus with its manifest attached (what the classes are, how to prepare inputs)."""

    def __init__(self, manifest: ExportManifest) -> None:
        super().__init__(manifest.model_spec)
        self.manifest = manifest


def export_run(run_dir: Path, checkpoint: Checkpoint = "best", output: Path | None = None,
               cache: Path | None = None) -> Path:
    """Write <output or run_dir/export>/model.safetensors + model.json; returns the folder."""
    run = read_run(run_dir)
    _, metadata = run_cache_metadata(run, cache)
    weights = checkpoint_path(run_dir, checkpoint)
    folder = output if output is not None else run_dir / "export"
    writable_folder(folder, "--output").mkdir(parents=True, exist_ok=True)
    manifest = ExportManifest(
        run=run_dir.name, checkpoint=checkpoint, model_spec=run.model_spec, class_names=run.class_names,
        normalization=run.normalization, side_input_size=run.model_spec.side_input_size,
        side_store_size=metadata.extraction.side_store_size, cache_key=run.cache_key, lpm=metadata.lpm,
        extraction=metadata.extraction, storage_dtype=metadata.storage.dtype,
    )
    copy_file(weights, folder / WEIGHTS_FILE)
    write_json(folder / MANIFEST_FILE, manifest.model_dump(mode="json"))
    return folder


def load_exported(path: str | Path) -> ExportedFPTPlus:
    """The exported model in eval mode on the CPU; `path` is the export folder or its model.json."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    manifest_file, weights_file = folder / MANIFEST_FILE, folder / WEIGHTS_FILE
    if not manifest_file.is_file() or not weights_file.is_file():
        raise UserError(f"{folder} is not an fpt model export (it needs {MANIFEST_FILE} and {WEIGHTS_FILE}).",
                        "Run `fpt export --run RUN_DIR` to make one.")
    try:
        manifest = ExportManifest.model_validate_json(manifest_file.read_text())
    except ValidationError as error:
        raise UserError(f"The manifest {manifest_file} is damaged or from another version ({error.error_count()} "
                        "invalid fields).", "Export the run again with this fpt.") from None
    model = ExportedFPTPlus(manifest)
    model.load_state_dict(load_file(str(weights_file)))
    return model.eval()
