"""`fpt extract --scheduler ...`: stage one split by whole shards across dask workers.

The client creates the store; each task extracts one contiguous group of shards with its own
copy of the LPM (one GPU per task when CUDA is used) and writes only those shard files and
their `shard_complete` flags, so workers never touch the same file. The client marks the store
complete once every shard is flagged. Re-running resumes the shards that are not flagged. On
Ctrl-C the tasks are asked to stop after their current batch, as a sweep's are
(pipeline/task_stop.py), and the client waits for them.
"""

from __future__ import annotations

import math
from pathlib import Path

from fpt.cache.progress import open_progress
from fpt.pipeline.cluster import (
    ClusterPlan, dask_client, in_daemon_process, plan_local, plan_remote, task_resources, worker_setup,
)
from fpt.pipeline.task_stop import TasksStopped, new_stop_name, still_running_hint, stop_requests, stopping_on_interrupt
from fpt.stages.core.devices import wants_gpu
from fpt.stages.core.errors import Interrupted, StopRequested
from fpt.stages.core.settings import PipelineConfig
from fpt.stages.extract.run import ExtractResult, extract_shards
from fpt.stages.extract.run import run_extract as extract_here

LOCAL = "local"


def shard_groups(shards: list[int], workers: int) -> list[list[int]]:
    """Contiguous groups of whole shards, as even as possible, at most one per worker."""
    if not shards:
        return []
    count = min(workers, len(shards))
    size = math.ceil(len(shards) / count)
    return [shards[i : i + size] for i in range(0, len(shards), size)]


def absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """Workers may run elsewhere: hand them absolute paths (on a shared file system)."""
    dataset = config.dataset.model_copy(update={
        "data_root": config.dataset.data_root.resolve(),
        "path": config.dataset.path.resolve() if config.dataset.path else None,
        "csv": config.dataset.csv.resolve() if config.dataset.csv else None,
    })
    cache = config.cache.model_copy(update={"root": config.cache.root.resolve()})
    return config.model_copy(update={"dataset": dataset, "cache": cache})


def extract_task(config: PipelineConfig, path: Path, shards: list[int], plan: ClusterPlan,
                 stop_name: str | None = None) -> int:
    """A dask task: extract these shards; stops between batches when the client asks (pipeline/task_stop.py)."""
    with stop_requests(stop_name) as should_stop:
        if should_stop():
            return 0
        device = worker_setup(plan, config.extract.device)
        extract = config.extract.model_copy(update={
            "device": device, "num_workers": 0 if in_daemon_process() else config.extract.num_workers,
        })
        try:
            return extract_shards(config.model_copy(update={"extract": extract}), path, shards, should_stop=should_stop)
        except StopRequested:
            return 0


def extract_on_cluster(config: PipelineConfig, path: Path, pending: list[int], scheduler: str,
                       show_progress: bool = True, processes: bool = True) -> int:
    """Extract the pending shards on dask (`scheduler`: an address, or 'local' for a LocalCluster)."""
    from distributed import as_completed

    if not pending:
        return 0
    device = config.extract.device
    want_gpu = wants_gpu(device)
    address = None if scheduler == LOCAL else scheduler
    plan = plan_local(len(pending), want_gpu)
    config = absolute_paths(config)
    computed = 0
    with dask_client(address, plan, processes=processes) as client:
        if address:
            plan = plan_remote(client, want_gpu if device != "auto" else None)
        groups = shard_groups(pending, plan.workers)
        stop_name = new_stop_name()
        futures = {client.submit(extract_task, config, path.resolve(), group, plan, stop_name,
                                 resources=task_resources(plan), pure=False): group for group in groups}
        with open_progress(show_progress) as progress:
            task = progress.add_task(f"Extracting shards on {plan.workers} dask worker(s)", total=len(pending))

            def stopping() -> None:
                progress.update(task, description="Stopping: each worker after its current batch")

            try:
                with stopping_on_interrupt(client, list(futures), stop_name, stopping):
                    for future in as_completed(list(futures)):
                        computed += future.result()
                        progress.update(task, advance=len(futures[future]))
            except TasksStopped as stopped:
                raise Interrupted(
                    f"The store {path} keeps every shard written before the interruption. Run the same command "
                    "again: it extracts only the missing shards."
                    + still_running_hint(address, stopped.still_running, "shard is written")) from None
    return computed


def run_extract(config: PipelineConfig, show_progress: bool = True, scheduler: str | None = None) -> ExtractResult:
    """`fpt extract`: stage one in this process, or, with `scheduler` (an address, or 'local'), its
    pending shards spread over dask workers."""
    if scheduler is None:
        return extract_here(config, show_progress)
    return extract_here(config, show_progress,
                        lambda config, path, pending, show: extract_on_cluster(config, path, pending, scheduler, show))
