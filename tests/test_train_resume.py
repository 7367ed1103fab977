"""An interrupted `fpt train-side` run goes on with `--resume` and ends exactly as an uninterrupted one."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sweep_support import REPO, build_tiny_cache, tiny_config, tiny_sets
from typer.testing import CliRunner

import fpt.stages.train.pack_resume
from fpt.cache.errors import UserError
from fpt.pipeline.cli import app
from fpt.stages.core.errors import Interrupted
from fpt.stages.train.recipe import TrainResult
from fpt.stages.train.resume_state import resume_path
from fpt.stages.train.train_side import train_side


def _epochs(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def _weights(run_dir: Path, which: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"{which}.safetensors"))


def _refused(args: list[str], reason: str) -> bool:
    """The CLI stops with a UserError (printed by `fpt`'s main as a one-paragraph message) that says `reason`."""
    result = CliRunner().invoke(app, args)
    return result.exit_code != 0 and isinstance(result.exception, UserError) and reason in result.exception.paragraph()


SETTINGS = ["train.epochs=4", "train.lr=0.002"]  # the run interrupted in the tests


def _uninterrupted_run(root: Path) -> TrainResult:
    """The tiny cache built under `root`, and the run trained on it without interruption."""
    build_tiny_cache(root)
    return train_side(tiny_config(root, SETTINGS + ["train.run_name=full"]), show_progress=False)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path, torch_threads,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    full = _uninterrupted_run(tmp_path)
    assert not resume_path(full.run_dir).exists()  # a finished run keeps no resume state

    # Ctrl-C just after the second epoch's resume state is written
    original = fpt.stages.train.pack_resume.PackResume.save

    def save_then_interrupt(self, trial, epoch):
        original(self, trial, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fpt.stages.train.pack_resume.PackResume, "save", save_then_interrupt)
    with pytest.raises(Interrupted, match="keeps its 2 finished epoch.* --resume"):
        train_side(tiny_config(tmp_path, SETTINGS + ["train.run_name=cut"]), show_progress=False)
    monkeypatch.undo()
    cut = tmp_path / "runs" / "cut"
    assert resume_path(cut).is_file() and not (cut / "final_metrics.json").exists()
    assert len(_epochs(cut)) == 2
    at_interruption = torch.load(resume_path(cut), weights_only=True)["model"]
    # as if the crash had come a moment later, in the third epoch's writes: its metrics line and a
    # best checkpoint are on disk, its resume state is not (and a hard kill cut a line short)
    with open(cut / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({**_epochs(cut)[-1], "epoch": 3, "seconds": 0.0}) + "\n")
        handle.write('{"epoch": 4, "train_lo')  # and a line the crash cut short
    torch.manual_seed(0)
    damaged = {k: torch.randn_like(v) for k, v in _weights(cut, "best").items()}
    from safetensors.torch import save_file
    save_file(damaged, str(cut / "checkpoints" / "best.safetensors"), metadata={"epoch": "3"})

    result = CliRunner().invoke(app, ["train-side", "--resume", str(cut), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _epochs(cut) == _epochs(full.run_dir)
    for which in ("best", "last"):
        assert _same(_weights(cut, which), _weights(full.run_dir, which)), which
    finals = [json.loads((d / "final_metrics.json").read_text()) for d in (cut, full.run_dir)]
    for key in ("best_epoch", "best_val", "test_best", "test_last"):
        assert finals[0][key] == finals[1][key], key
    assert not resume_path(cut).exists()
    # epochs 3 and 4 did train after the resume: the final weights are not those of epoch 2
    assert not _same(_weights(cut, "last"), at_interruption)

    assert _refused(["train-side", "--resume", str(cut)], "has finished")


def test_resume_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    build_tiny_cache(tmp_path)
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    assert _refused(["train-side", "--resume", str(run)], "no config.yaml")
    assert _refused(["train-side", "--resume", str(run), "--set", "train.lr=0.1"], "takes no --set")

    # a run folder without a resume state (stopped before its first epoch ended)
    finished = train_side(tiny_config(tmp_path, ["train.epochs=1", "train.run_name=done"]), show_progress=False)
    for name in ("config.yaml", "run.json"):
        (run / name).write_text((finished.run_dir / name).read_text())
    (run / "checkpoints").mkdir()
    assert _refused(["train-side", "--resume", str(run)], "no resume state")


def test_a_full_disk_stops_the_run_with_a_message_and_resume_finishes_it(tmp_path: Path, torch_threads,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    full = _uninterrupted_run(tmp_path)

    # the disk fills up while the third epoch's resume state is written: part of it is on disk
    real_save = torch.save
    calls = []

    def save_until_full(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    sets = [item for setting in tiny_sets(tmp_path) + SETTINGS + ["train.run_name=cut"] for item in ("--set", setting)]
    result = CliRunner().invoke(app, ["train-side", "--from-cache", "--dataset", "demo", "--quiet",
                                      "--config", str(REPO / "pipeline.yaml"), *sets])
    monkeypatch.undo()
    cut = tmp_path / "runs" / "cut"
    assert isinstance(result.exception, UserError), result.output
    message = result.exception.paragraph()
    assert "is full" in message and "keeps its 2 finished epoch(s) of 4" in message
    assert f"fpt train-side --resume {cut}" in message
    assert sorted(p.name for p in (cut / "checkpoints").iterdir() if p.name.startswith("resume")) == ["resume.pt"]
    assert torch.load(resume_path(cut), weights_only=True)["epoch"] == 2

    result = CliRunner().invoke(app, ["train-side", "--resume", str(cut), "--quiet"])
    assert result.exit_code == 0, result.output
    assert _epochs(cut) == _epochs(full.run_dir)
    for which in ("best", "last"):
        assert _same(_weights(cut, which), _weights(full.run_dir, which)), which
