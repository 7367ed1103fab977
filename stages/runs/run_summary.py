"""What every finished run folder gets: pictures, report.md and an exported model."""

from __future__ import annotations

from pathlib import Path

from fpt.stages.runs.export import export_run
from fpt.stages.runs.report import write_report


def summarize_run(run_dir: Path, draw_pictures: bool = True) -> list[Path]:
    """Write the report of a finished run (pictures optional) and export its best checkpoint to <run>/export."""
    files = write_report(run_dir, draw_pictures)
    folder = export_run(run_dir, "best")
    return [*files, folder]
