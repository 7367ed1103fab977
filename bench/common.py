"""Shared pieces of the benchmark scripts: settings, fresh-process runs, tables and JSON.

Every script runs from the repository root as `python bench/<name>.py [--quick]` and imports the
installed fpt (`pip install -e .`, as in the README's first line).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "work"  # demo images and caches, reused between runs
console = Console(width=200)

# The two LPMs benchmarked: the demo's tiny CPU model and the paper's ViT-B/16 at 512 px.
SCENARIOS: dict[str, list[str]] = {
    "demo": [],  # overrides.demo in pipeline.yaml: vit_tiny_patch16_224 at 512 px, random weights
    "vitb512": ["lpm.name=vit_base_patch16_384", "lpm.weights=none", "extract.input_size=512"],
}


# The scenarios' LPMs as stage two sees them: (width, heads), patch 16 at 512 px (1025 tokens).
SCENARIO_LPM_SHAPES: dict[str, tuple[int, int]] = {"demo": (192, 3), "vitb512": (768, 12)}


def stage_two_shapes(scenario: str, num_classes: int):
    """A scenario's stage-two model at fpt's defaults (6 chosen layers, 128 px side input), and the
    tokens kept per head at the default token ratio (205 of 1025)."""
    from fpt.stages.lpm.token_selection import num_selected
    from fpt.stages.model.fpt_model import ModelSpec

    width, heads = SCENARIO_LPM_SHAPES[scenario]
    spec = ModelSpec(num_classes=num_classes, lpm_dim=width, num_heads=heads, patch_size=16, num_layers=6,
                     side_input_size=128)
    return spec, num_selected(1 + (512 // 16) ** 2, 0.2)


def sync(device) -> None:
    """Wait for the GPU's queued work, so a timer read next measures it (nothing to wait for on the CPU)."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(scenario: str, num_train: int, extra: list[str] | None = None, num_val: int = 4, num_test: int = 4):
    """The pipeline configuration of a scenario, with the benchmark's own data and cache folders."""
    from fpt.pipeline.config import load_config

    sets = [
        f"dataset.data_root={WORK / 'data' / f'{num_train}-{num_val}-{num_test}'}",
        f"demo.num_train={num_train}", f"demo.num_val={num_val}", f"demo.num_test={num_test}",
        f"cache.root={WORK / 'cache'}", f"train.runs_root={WORK / 'runs'}",
        *SCENARIOS[scenario], *(extra or []),
    ]
    return load_config(ROOT / "pipeline.yaml", sets, "demo"), sets


def apply_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads here and in child processes (which read OMP_NUM_THREADS)."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory of this process (VmHWM) and of its largest finished child.

    VmHWM belongs to the process's own address space, so it starts afresh at exec; ru_maxrss
    does not (Linux carries the parent's high-water mark over fork+exec), so it is only the fallback.
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) / 1024
    except OSError:
        pass
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self_mb": own, "children_mb": children}


def bare_torch_rss_mb() -> float:
    """Peak RSS of a fresh process that only imports torch: the floor the memory targets are measured from."""
    code = ("import re, torch; print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def run_fresh(script: Path, args: list[str], timeout: float | None = None) -> dict[str, Any]:
    """Run `python script args --result-json F` in a fresh process and return the JSON it wrote."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, str(script), *args, "--result-json", str(result)]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not result.exists():
            tail = (done.stderr or done.stdout)[-3000:]
            return {"error": f"exit {done.returncode}: {tail.strip().splitlines()[-1] if tail.strip() else ''}",
                    "stderr_tail": tail}
        payload = json.loads(result.read_text())
        payload["process_seconds"] = time.perf_counter() - began
        return payload


def machine() -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_1m": os.getloadavg()[0],
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    console.print(f"[dim]wrote {path.relative_to(ROOT)}[/dim]")
    return path


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(cell) for cell in row))
    console.print(table)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)
