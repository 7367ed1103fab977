"""pipeline.yaml holds the paper's defaults; overrides work; bad values name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fpt.cache.errors import UserError
from fpt.pipeline.config import load_config
from fpt.stages.core.settings import PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def test_pipeline_yaml_holds_the_paper_defaults():
    config = load_config(REPO / "pipeline.yaml", dataset="ddr")
    assert config.lpm.name == "vit_base_patch16_384.orig_in21k_ft_in1k"
    assert config.lpm.weights == "hub"
    assert config.extract.input_size == 512
    assert config.extract.layers == "last_half"
    assert config.extract.resolved_layers(12) == [6, 7, 8, 9, 10, 11]  # ViT-B/16: the paper's 6..11
    assert config.extract.resolved_layers(24) == list(range(12, 24))  # ViT-L (RETFound): its last half
    assert config.extract.token_ratio == 0.2
    assert config.extract.importance == "global"
    assert config.side.num_prompts == 16 and config.side.reduction == 8 and config.side.input_size == 128
    assert config.side.prompt_norm and not config.side.prompt_projection and config.side.prompt_reduction == 1
    assert config.train.weight_decay == 0.1 and config.train.betas == (0.9, 0.999)
    assert config.train.epochs == 20 and config.train.batch_size == 16 and config.train.grad_clip == 1.0
    assert config.cache.dtype == "float16"


def test_yaml_lists_every_field_of_the_models():
    """Every setting is visible in pipeline.yaml (nothing only hidden in code)."""
    tree = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    defaults = PipelineConfig().model_dump()

    def missing(expected: dict, actual: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in expected.items():
            if key == "overrides":
                continue
            if key not in actual:
                out.append(prefix + key)
            elif isinstance(value, dict):
                out += missing(value, actual[key] or {}, prefix + key + ".")
        return out

    assert missing(defaults, tree) == []


def test_dataset_overrides_then_cli_assignments():
    config = load_config(REPO / "pipeline.yaml", ["train.lr=1e-4", "extract.layers=[4,5]"], dataset="demo")
    assert config.lpm.name == "vit_tiny_patch16_224"  # from overrides.demo
    assert config.lpm.weights == "none"
    assert config.train.lr == 1e-4  # YAML reads '1e-4' as a string; pydantic converts it
    assert config.extract.layers == [4, 5]
    config = load_config(REPO / "pipeline.yaml", ["lpm.weights=hub"], dataset="demo")
    assert config.lpm.weights == "hub"


def test_invalid_value_names_field_and_reason():
    with pytest.raises(UserError) as error:
        load_config(REPO / "pipeline.yaml", ["extract.token_ratio=1.5", "train.epochs=zero"])
    message = error.value.paragraph()
    assert "extract.token_ratio" in message and "less than or equal to 1" in message
    assert "train.epochs" in message


def test_unknown_field_is_rejected():
    with pytest.raises(UserError, match="train.learning_rate"):
        load_config(REPO / "pipeline.yaml", ["train.learning_rate=0.1"])


def test_bad_yaml_gives_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n   epochs: 3\n")
    with pytest.raises(UserError, match="line"):
        load_config(bad)


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_assignment_without_equals():
    with pytest.raises(UserError, match="no '='"):
        load_config(REPO / "pipeline.yaml", ["train.lr"])


def test_a_written_config_reads_back_as_the_same_config(tmp_path: Path):
    from fpt.stages.core.settings import config_to_yaml
    from fpt.stages.runs.trained_run import run_config

    # train.epochs and lpm.name are keys the demo's overrides set: the --set values must survive
    config = load_config(REPO / "pipeline.yaml", ["train.lr=3e-4", "extract.layers=[4,5]", "side.use_prompts=false",
                                                  "train.epochs=2", "lpm.name=vit_small_patch16_224"], dataset="demo")
    assert config.train.epochs == 2 and config.lpm.name == "vit_small_patch16_224" and config.overrides["demo"]
    text = config_to_yaml(config)
    # the same text as PyYAML's pure-Python emitter (config_to_yaml uses libyaml's where it can)
    assert text == yaml.dump(config.model_dump(mode="json", exclude={"overrides"}), Dumper=yaml.SafeDumper,
                             sort_keys=False)
    written = tmp_path / "config.yaml"
    written.write_text(text)
    resolved = config.model_copy(update={"overrides": {}})
    assert load_config(written, []) == resolved  # what `fpt train-side --config <run>/config.yaml` reads
    assert run_config(tmp_path) == resolved

    # a run folder whose config.yaml still holds an overrides section: they are not applied a second time
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    assert run_config(tmp_path).model_copy(update={"overrides": {}}) == resolved
