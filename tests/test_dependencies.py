"""pyproject.toml tells the truth about fpt's dependencies: every third-party module imported anywhere in the
checkout (the package, its tests and benchmarks) is declared, in `dependencies` or an extra, and what is
installed here satisfies the declared lower bounds."""

from __future__ import annotations

import ast
import functools
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution, where they differ and the distribution may not be installed to say so itself
DISTRIBUTIONS = {"PIL": "pillow", "yaml": "PyYAML", "sklearn": "scikit-learn", "importlinter": "import-linter"}


def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared() -> dict[str, list[Requirement]]:
    """'dependencies' and each extra -> its requirements."""
    table = project()
    return {"dependencies": [Requirement(r) for r in table["dependencies"]],
            **{extra: [Requirement(r) for r in reqs] for extra, reqs in table["optional-dependencies"].items()}}


def source_files() -> list[Path]:
    return [path for path in REPO.rglob("*.py")
            if not any(part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(REPO).parts)]


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one file (a relative import is the package's own)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def third_party_imports() -> dict[str, list[str]]:
    """Third-party top-level module -> the files importing it; the standard library, fpt, and the scripts
    that tests/ and bench/ import from beside themselves are left out."""
    files = source_files()
    local = {path.stem for path in files if path.parent != REPO}  # tests/tiny.py, bench/common.py, ...
    found: dict[str, list[str]] = {}
    for path in files:
        for name in imported_modules(path) - set(sys.stdlib_module_names) - local - {"fpt"}:
            found.setdefault(name, []).append(str(path.relative_to(REPO)))
    return found


@functools.cache
def installed_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()  # import name -> the installed distributions providing it


def distribution_of(module: str) -> str:
    installed = installed_distributions().get(module, [])
    return canonicalize_name(DISTRIBUTIONS.get(module) or (installed[0] if installed else module))


def test_the_scan_finds_the_imports_it_is_about():
    found = third_party_imports()
    assert {"torch", "torchvision", "timm", "PIL", "yaml", "zarr", "pytest"} <= set(found)
    assert "stages/train/augment.py" in found["torchvision"]
    assert not {"os", "fpt", "tiny", "common"} & set(found)
    assert distribution_of("PIL") == "pillow" and distribution_of("sklearn") == "scikit-learn"


def test_every_imported_third_party_module_is_declared():
    provided: dict[str, str] = {}  # distribution -> where it is declared
    for group, requirements in declared().items():
        for requirement in requirements:
            provided.setdefault(canonicalize_name(requirement.name), group)
            for extra in requirement.extras:  # dask[distributed] brings the distribution `distributed`
                provided.setdefault(canonicalize_name(extra), group)
    undeclared = {module: files for module, files in third_party_imports().items()
                  if distribution_of(module) not in provided}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_installed_versions_meet_the_declared_lower_bounds():
    too_old, missing = [], []
    for group, requirements in declared().items():
        for requirement in requirements:
            try:
                installed = Version(metadata.version(requirement.name))
            except metadata.PackageNotFoundError:
                missing.append(f"{requirement} ({group})")
                continue
            if not requirement.specifier.contains(installed, prereleases=True):
                too_old.append(f"{requirement} ({group}): {installed} installed")
    assert not too_old, too_old
    required = [name for name in missing if name.endswith("(dependencies)") or name.endswith("(dev)")]
    assert not required, f"not installed: {required}"  # the tests run with the dev extra (README, .ci/run)
