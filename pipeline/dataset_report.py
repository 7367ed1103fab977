"""Printing a dataset check (`fpt extract --dry-run`) for people."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from fpt.stages.datasets.validate import DatasetReport

LISTED_FILES = 10


def print_dataset_report(report: DatasetReport, console: Console) -> None:
    table = Table(title=f"Dataset {report.dataset} ({report.layout} layout) at {report.location}")
    table.add_column("split")
    for name in report.class_names:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for split, counts in report.class_counts.items():
        table.add_row(split, *map(str, counts), str(sum(counts)))
    console.print(table)
    for reason, count in report.excluded.items():
        console.print(f"Left out on purpose: {count} image(s), {reason}.")
    for note in report.notes:
        console.print(note, highlight=False)
    if report.mean is not None and report.std is not None:
        mean = ", ".join(f"{x:.5f}" for x in report.mean)
        std = ", ".join(f"{x:.5f}" for x in report.std)
        console.print(f"Normalisation ({report.normalization_source}): mean ({mean}), std ({std}).")
    for problem in report.problems:
        style = "bold red" if problem.severity == "error" else "yellow"
        console.print(f"[{style}]{problem.severity}[/{style}] {problem.kind}: {problem.message}. {problem.fix}", highlight=False)
        for path in problem.paths[:LISTED_FILES]:
            console.print(f"    {path}", highlight=False, markup=False)
        if len(problem.paths) > LISTED_FILES:
            console.print(f"    ... and {len(problem.paths) - LISTED_FILES} more")
    if report.decode_failures:
        action = "skipped" if report.on_decode_error == "skip" else "fatal (extract.on_decode_error=fatal)"
        console.print(f"[bold red]{len(report.decode_failures)} image(s) cannot be decoded[/bold red], {action}:")
        for failure in report.decode_failures[:LISTED_FILES]:
            console.print(f"    {failure.path}: {failure.reason}", highlight=False, markup=False)
        if len(report.decode_failures) > LISTED_FILES:
            console.print(f"    ... and {len(report.decode_failures) - LISTED_FILES} more")
    verdict = "[green]ready for extraction[/green]" if report.ready else "[bold red]not ready for extraction[/bold red]"
    console.print(f"{report.images_checked} image(s) checked in {report.seconds:.1f} s: {verdict}. The LPM was not run.")
