"""Building the frozen large pre-trained model (LPM) with timm, and naming its weights.

Weights come from the timm/Hugging Face hub name (`weights: hub`), from a local file
(`weights: /path/to/file.safetensors`), or are random (`weights: none`, only when asked for,
recorded in the cache as `random:<seed>`). Position embeddings are resampled to the
requested input size by timm's own checkpoint filter.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fpt.cache.errors import UserError
from fpt.cache.hashing import file_sha256
from fpt.cache.metadata import LPMIdentity
from fpt.stages.core.settings import LPMConfig
from fpt.stages.lpm.checkpoint import load_encoder
from fpt.stages.lpm.families import check_family


def state_dict_sha256(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _create(name: str, input_size: int, **kwargs: object) -> torch.nn.Module:
    import timm

    if not name.startswith("hf-hub:") and not timm.is_model(name):  # hf-hub:org/repo is timm's own name for a hub repo
        raise UserError(
            f"timm knows no model called {name!r} (lpm.name).",
            "Use a timm ViT name such as vit_base_patch16_384.orig_in21k_ft_in1k; "
            "`python -c \"import timm; print(timm.list_models('vit_*'))\"` lists them.",
        )
    try:
        return timm.create_model(name, img_size=input_size, num_classes=0, **kwargs)
    except Exception as error:
        # the architecture of a hub repo comes from its config.json, itself on the hub; weights that
        # cannot be fetched are reported by the caller, which knows they were asked for
        if not name.startswith("hf-hub:") or kwargs.get("pretrained"):
            raise
        raise UserError(f"Could not get the configuration of {name} from the hub ({error}).",
                        "Without internet access, use the timm name of its architecture as lpm.name and "
                        "the downloaded weights file as lpm.weights.") from None


def build_lpm(config: LPMConfig, input_size: int, notes: list[str] | None = None) -> tuple[torch.nn.Module, LPMIdentity]:
    """The frozen LPM in eval mode at `input_size`, and its identity; what loading a weights file found
    (wrappers, prefixes, keys left out) is appended to `notes`."""
    weights = config.weights.strip()
    if weights.lower() == "none":
        torch.manual_seed(config.init_seed)
        model = _create(config.name, input_size, pretrained=False)
        source, identity = "none", f"random:{config.init_seed}"
    elif weights.lower() == "hub":
        try:
            model = _create(config.name, input_size, pretrained=True)
        except UserError:
            raise
        except Exception as error:  # network, missing hub entry, corrupt download
            raise UserError(
                f"Could not get the pre-trained weights of {config.name} from the hub ({error}).",
                "Without internet access, download the weights elsewhere and set lpm.weights to "
                "the local file; set lpm.weights to none only to try the pipeline with random weights.",
            ) from None
        source, identity = "hub", "sha256:" + state_dict_sha256(model)
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserError(
                f"The LPM weights file {path} (lpm.weights) does not exist.",
                "Give the path to a .safetensors, .pth or .bin file, 'hub', or 'none'.",
            )
        model = _create(config.name, input_size, pretrained=False)
        found = load_encoder(model, path, config.checkpoint_key, config.name)
        if notes is not None:
            notes.extend(found)
        source, identity = "file", "sha256:" + file_sha256(path)
    model.eval().requires_grad_(False)
    return model, describe_lpm(model, config.name, source, identity)


def lpm_architecture(config: LPMConfig, input_size: int) -> LPMIdentity:
    """The LPM's shape (width, heads, depth, patch, prefix tokens) without its weights: built on torch's
    meta device, which allocates nothing (ViT-L/16 in 0.2 s), so settings can be checked against it
    before the image scan and the weights' download or hashing. Its weights identity is 'unchecked'."""
    with torch.device("meta"):
        model = _create(config.name, input_size, pretrained=False)
    return describe_lpm(model, config.name, "none", "unchecked")


def describe_lpm(model: torch.nn.Module, name: str, source: str, identity: str) -> LPMIdentity:
    check_family(model, name)
    attn = model.blocks[0].attn
    patch = model.patch_embed.patch_size
    head_dim = getattr(attn, "head_dim", None) or model.embed_dim // attn.num_heads
    return LPMIdentity(
        name=name,
        weights_source=source,
        weights_identity=identity,
        embed_dim=model.embed_dim,
        num_heads=attn.num_heads,
        head_dim=head_dim,
        patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
        depth=len(model.blocks),
        num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)),
        num_params=sum(p.numel() for p in model.parameters()),
        class_token=getattr(model, "cls_token", None) is not None,
    )
