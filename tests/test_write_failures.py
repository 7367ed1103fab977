"""Every write failure is a one-paragraph message: folders that cannot be written are refused before
the work, and a full disk keeps what was finished and leaves no temporary file."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from sweep_support import REPO, build_tiny_cache, tiny_config, tiny_sets
from typer.testing import CliRunner

import fpt.pipeline.cli
import fpt.stages.runs.run_folder
from fpt.cache.errors import UserError
from fpt.pipeline.cli import app
from fpt.stages.train.train_side import train_side


def _blocked(tmp_path: Path) -> Path:
    """A file where a folder should be: no one, root included, can create a folder below it."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    return blocker


def _stray_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _fpt_main(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """`fpt ARGS` as the console script runs it: its exit code and what it printed on stderr."""
    monkeypatch.setattr(sys, "argv", ["fpt", *argv])
    with pytest.raises(SystemExit) as exit_:
        fpt.pipeline.cli.main()
    return int(exit_.value.code or 0), capsys.readouterr().err


def test_a_runs_folder_that_cannot_be_written_is_refused_before_training(tmp_path: Path) -> None:
    build_tiny_cache(tmp_path)
    runs = _blocked(tmp_path) / "runs"
    with pytest.raises(UserError) as refused:
        train_side(tiny_config(tmp_path, [f"train.runs_root={runs}"]), show_progress=False)
    assert f"The folder {runs} (train.runs_root) cannot be written" in refused.value.paragraph()


def test_a_full_disk_at_the_first_checkpoint_leaves_no_epoch_line_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_tiny_cache(tmp_path)
    real_save = fpt.stages.runs.run_folder.save_file

    def full(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)  # part of it reached the disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(fpt.stages.runs.run_folder, "save_file", full)
    sets = [item for setting in tiny_sets(tmp_path) + ["train.run_name=full"] for item in ("--set", setting)]
    result = CliRunner().invoke(app, ["train-side", "--dataset", "demo", "--quiet", "--config",
                                      str(REPO / "pipeline.yaml"), *sets])
    run = tmp_path / "runs" / "full"
    assert isinstance(result.exception, UserError), result.output
    message = result.exception.paragraph()
    assert f"The disk holding the run folder {run} is full" in message and "before its first epoch ended" in message
    assert not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip()
    assert not _stray_temporaries(run) and not list((run / "checkpoints").iterdir())


def test_a_full_disk_while_drawing_the_report_is_a_message_and_keeps_the_old_pictures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    build_tiny_cache(tmp_path)
    run = train_side(tiny_config(tmp_path), show_progress=False).run_dir
    pictures = {p.name: p.read_bytes() for p in run.glob("*.png")}
    assert pictures
    real_savefig = Figure.savefig

    def full(figure, target, *args, **kwargs):
        real_savefig(figure, target, *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(Figure, "savefig", full)
    code, err = _fpt_main(["report", str(run)], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    paragraph = " ".join(err.split())
    assert "Error: The disk is full:" in paragraph and "Free some space, then run the same command again" in paragraph
    assert {p.name: p.read_bytes() for p in run.glob("*.png")} == pictures
    assert not _stray_temporaries(run)


def test_an_export_folder_that_cannot_be_written_is_a_message(tmp_path: Path) -> None:
    build_tiny_cache(tmp_path)
    run = train_side(tiny_config(tmp_path, ["train.epochs=1"]), show_progress=False).run_dir
    output = _blocked(tmp_path) / "export"
    result = CliRunner().invoke(app, ["export", "--run", str(run), "--output", str(output)])
    assert isinstance(result.exception, UserError), result.output
    assert f"The folder {output} (--output) cannot be written" in result.exception.paragraph()
    assert json.loads((run / "run.json").read_text())["cache"]  # the run itself is untouched
