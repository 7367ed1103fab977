"""User errors reach the terminal as one paragraph, without a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_fpt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fpt.pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_missing_dataset_folder(tmp_path: Path):
    result = run_fpt("extract", "--dataset", "folder", "--data-root", str(tmp_path / "missing"),
                     "--config", str(REPO / "pipeline.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "does not exist" in result.stderr and str(tmp_path / "missing") in result.stderr.replace("\n", "")
    assert "Traceback" not in result.stderr + result.stdout


def test_invalid_setting(tmp_path: Path):
    result = run_fpt("extract", "--set", "extract.importance=median", "--config", str(REPO / "pipeline.yaml"), cwd=tmp_path)
    assert result.returncode == 2
    assert "extract.importance" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_side_without_cache(tmp_path: Path):
    result = run_fpt("train-side", "--from-cache", "--dataset", "demo", "--config", str(REPO / "pipeline.yaml"),
                     "--set", f"cache.root={tmp_path / 'none'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "fpt extract --dataset demo" in result.stderr
    assert "Traceback" not in result.stderr
