"""Loading an LPM's encoder weights from a local checkpoint file in the formats people have.

- timm / Hugging Face state dicts (.safetensors, .pth, .bin);
- MAE-style checkpoints as RETFound ships them: `{'model': state_dict, 'optimizer': ..., 'epoch': ...,
  'args': argparse.Namespace}`, the encoder beside the MAE decoder (`decoder_*`, `mask_token`);
- Meta's DINOv2/DINOv3 repository format: `{'teacher': {'backbone.blocks...'}}` or bare, with
  `register_tokens` and `mask_token`, converted by timm's own checkpoint filter;
- any of these with a `module.`, `backbone.`, `encoder.` or `model.` prefix on every key.

Pickled files are read with `torch.load(weights_only=True)`, which runs no code from the file; the
harmless types such files hold beside the tensors (`argparse.Namespace`) are allow-listed. fpt
sorts the keys first and then loads the encoder's strictly: every encoder parameter of the model
must come from the file (a missing one is refused by name), and keys that are not the encoder's
are left out and listed. timm alone would load such a file non-strictly and keep the random
initial values of whatever it did not find.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fpt.cache.errors import UserError

CONTAINER_KEYS = ("model", "state_dict", "teacher", "student", "module")  # tried in this order by `auto`
PREFIXES = ("module.", "backbone.", "encoder.", "model.", "teacher.", "student.")
# an MAE decoder beside the encoder: its mask token is the decoder's, not the encoder's
DECODER_PREFIXES = ("decoder_", "decoder.")
SAFE_GLOBALS = [argparse.Namespace]


def read_checkpoint(path: Path) -> dict:
    """The file's top-level object, read without running code from it."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(
            f"The checkpoint {path} holds Python objects that fpt does not load, since loading them could run "
            f"code from the file ({str(error).splitlines()[0]}).",
            "Save the encoder's state dict alone (torch.save(model.state_dict(), path) or safetensors) and point "
            "lpm.weights at that file.",
        ) from None
    except Exception as error:  # a truncated file, another format
        raise UserError(f"The checkpoint {path} cannot be read ({error}).",
                        "Give a .safetensors, .pth or .bin file of the model's weights.") from None
    if not isinstance(loaded, dict):
        raise UserError(f"The checkpoint {path} holds a {type(loaded).__name__}, not a dictionary of weights.",
                        "Give a file saved from a state dict (torch.save(model.state_dict(), path)).")
    return loaded


def _is_state_dict(value: object) -> bool:
    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def unwrap(checkpoint: dict, key: str, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The state dict inside the file (descending through `key`, or the usual containers for `auto`),
    and the containers passed on the way."""
    passed: list[str] = []
    current: object = checkpoint
    if key != "auto":
        for part in key.split("."):
            if not isinstance(current, dict) or part not in current:
                raise UserError(f"The checkpoint {path} has no '{key}' (lpm.checkpoint_key).",
                                f"Its top-level keys are {sorted(checkpoint)[:10]}; set lpm.checkpoint_key to one "
                                "of them, or to auto.")
            current, passed = current[part], passed + [part]
    while not _is_state_dict(current) and isinstance(current, dict):
        inner = next((k for k in CONTAINER_KEYS if isinstance(current.get(k), dict)), None)
        if inner is None:
            break
        current, passed = current[inner], passed + [inner]
    if not _is_state_dict(current):
        raise UserError(f"fpt finds no dictionary of weights in the checkpoint {path}.",
                        f"Set lpm.checkpoint_key to the key that holds them (top-level keys: {sorted(checkpoint)[:10]}).")
    return dict(current), passed  # type: ignore[arg-type]


def strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes (`module.`, `backbone.`, ...) that the encoder's keys carry in the file."""
    stripped: list[str] = []
    while not state.keys() & wanted:
        counts = Counter(prefix for prefix in PREFIXES for name in state if name.startswith(prefix))
        if not counts:
            break
        prefix = counts.most_common(1)[0][0]
        state = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
        stripped.append(prefix)
    return state, stripped


def _summary(names: list[str]) -> str:
    """Key names grouped by their first part, e.g. 'decoder_blocks.* (96), mask_token'."""
    groups = Counter(name.split(".")[0] for name in names)
    return ", ".join(f"{group}.* ({count})" if count > 1 else group for group, count in sorted(groups.items()))


def load_encoder(model: nn.Module, path: Path, checkpoint_key: str, name: str) -> list[str]:
    """Load the encoder weights in `path` into `model` (strictly for the encoder); notes for the user."""
    state, containers = unwrap(read_checkpoint(path), checkpoint_key, path)
    wanted = set(model.state_dict())
    state, prefixes = strip_prefixes(state, wanted)
    dropped = sorted(k for k in state if k.startswith(DECODER_PREFIXES))
    if dropped and "mask_token" in state and "mask_token" not in wanted:
        dropped.append("mask_token")
    state = {k: v for k, v in state.items() if k not in dropped}
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:  # timm's own conversions: position embeddings resampled, Meta DINOv2 names, ...
        try:
            state = convert(state, model)
        except Exception as error:
            raise UserError(f"The weights in {path} do not fit {name} ({error}).",
                            "Check that lpm.name is the architecture the file was saved from.") from None
    missing = sorted(wanted - state.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise UserError(
            f"The checkpoint {path} lacks {len(missing)} of the {len(wanted)} weights of {name} ({shown}); "
            "fpt would extract with random values in their place.",
            "Check that lpm.name is the architecture the file was saved from, and lpm.checkpoint_key if the "
            "weights sit under another key.",
        )
    unexpected = sorted(state.keys() - wanted)
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in wanted}, strict=True)
    except RuntimeError as error:
        raise UserError(f"The weights in {path} do not load into {name} ({str(error).splitlines()[0]}).",
                        "Check that lpm.name is the architecture the file was saved from.") from None
    notes = []
    if containers or prefixes:
        where = " ".join(filter(None, [f"under {'/'.join(repr(c) for c in containers)}" if containers else "",
                                       f"with prefix {'+'.join(prefixes)}" if prefixes else ""]))
        notes.append(f"LPM weights: {len(wanted)} tensors of {name} loaded from {path.name}, {where}.")
    if dropped or unexpected:
        notes.append(f"LPM weights: {len(dropped) + len(unexpected)} keys of {path.name} are not the encoder's and "
                     f"were left out: {_summary(dropped + unexpected)}.")
    return notes
