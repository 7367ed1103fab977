"""The architecture holds: pipeline -> stages -> cache, the stages' own layers, rich and typer in the
pipeline only, no import circles (import-linter's contracts in pyproject.toml), every package
shipped, and the installed tool behaving the same from any folder."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_are_kept(capsys) -> None:
    code = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "Contracts: 4 kept, 0 broken." in report


def test_every_folder_of_code_is_a_listed_package() -> None:
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {"fpt." + ".".join(init.parent.relative_to(REPO).parts)
               for top in ("pipeline", "stages", "cache") for init in (REPO / top).rglob("__init__.py")}
    assert folders | {"fpt"} == listed


def _fpt(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "fpt.pipeline.cli", *args], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_shipped_defaults_apply_from_any_folder_and_a_local_file_layers_on_top(tmp_path: Path) -> None:
    shown = _fpt("config", "show", "--dataset", "demo", cwd=tmp_path)
    read_line, body = shown.split("\n", 1)
    settings = yaml.safe_load(body)
    shipped = yaml.safe_load((REPO / "pipeline.yaml").read_text())
    assert read_line == f"# read: {REPO / 'pipeline.yaml'}"
    # the demo's override from the shipped file: the tiny random-weight LPM, not the hub's ViT-B
    assert settings["lpm"] == {**shipped["lpm"], **shipped["overrides"]["demo"]["lpm"]}
    assert settings["train"]["epochs"] == shipped["overrides"]["demo"]["train"]["epochs"]

    (tmp_path / "pipeline.yaml").write_text("train:\n  batch_size: 4\n")
    layered = _fpt("config", "show", "--dataset", "demo", "--set", "train.lr=0.002", cwd=tmp_path)
    read_line, body = layered.split("\n", 1)
    assert read_line == f"# read: {REPO / 'pipeline.yaml'}, pipeline.yaml"
    settings = yaml.safe_load(body)
    assert settings["train"]["batch_size"] == 4 and settings["train"]["lr"] == 0.002
    assert settings["lpm"]["name"] == shipped["overrides"]["demo"]["lpm"]["name"]


def test_version_is_the_installed_one(tmp_path: Path) -> None:
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert _fpt("--version", cwd=tmp_path).strip() == f"fpt {expected}"


def test_progress_goes_to_a_file_as_plain_lines(tmp_path: Path) -> None:
    """Where the output is not a terminal, long work reports in plain lines rather than bars."""
    from tiny import cli_args, tiny_assignments

    log = tmp_path / "extract.log"
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "fpt.pipeline.cli", "extract", "--dataset", "demo",
                               *cli_args(tiny_assignments(tmp_path))], cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = text.splitlines()
    assert any(line.startswith("Extracting: 24/24 ") and line.endswith("img/s") for line in lines), text
    assert not any(character in text for character in "━\r\x1b")  # no bar drawing, no cursor control
