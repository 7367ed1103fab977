"""What a layout reader found besides samples: problems (errors stop extraction) and notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from fpt.cache.errors import UserError
from fpt.stages.datasets.samples import Sample, Split

Severity = Literal["error", "warning"]
LISTED_PATHS = 5  # how many file names a message names before "and N more"


class DatasetProblem(BaseModel):
    """One kind of problem, with every file it concerns and what to do about it."""

    kind: str
    severity: Severity
    message: str
    fix: str
    paths: list[str] = []

    def describe(self, listed: int = LISTED_PATHS) -> str:
        text = self.message
        if self.paths:
            shown = ", ".join(self.paths[:listed])
            more = len(self.paths) - listed
            text += f" ({shown}{f' and {more} more' if more > 0 else ''})"
        return text


@dataclass
class LayoutResult:
    """A layout reader's answer: labelled samples plus everything odd it saw on the way."""

    samples: list[Sample]
    class_names: list[str]
    sources: dict[Split, str]  # where each split's labels were read: its folder, label file or table
    problems: list[DatasetProblem] = field(default_factory=list)
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> images left out on purpose
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, severity: Severity, message: str, fix: str, paths: list[str] | None = None) -> None:
        self.problems.append(DatasetProblem(kind=kind, severity=severity, message=message, fix=fix, paths=paths or []))

    @property
    def errors(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DatasetProblem]:
        return [p for p in self.problems if p.severity == "warning"]


def raise_for_errors(dataset: str, problems: list[DatasetProblem]) -> None:
    """Stop with one paragraph naming every kind of structural error and the files it concerns."""
    errors = [p for p in problems if p.severity == "error"]
    if not errors:
        return
    what = f"Dataset {dataset} cannot be used as it is: " + " ".join(
        f"{index}) {problem.describe()}." for index, problem in enumerate(errors, 1)
    )
    fixes = " ".join(dict.fromkeys(problem.fix for problem in errors))
    raise UserError(what, fixes + " `fpt extract --dry-run` lists every problem without running the LPM.")
