"""Connecting to dask.distributed: a LocalCluster sized to this machine, or an existing scheduler.

A local cluster gets one single-threaded worker process per task slot so that trials never
oversubscribe the cores: with W workers on C cores each task runs torch with C // W threads.
With CUDA, there is one worker per GPU and each declares the resource GPU=1, so a task that
asks for resources={'GPU': 1} holds one GPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pydantic import BaseModel

from fpt.cache.errors import UserError
from fpt.cache.io_thread import stop_zarr_io_thread_at_exit
from fpt.stages.core.devices import machine_cores


class ClusterPlan(BaseModel):
    """How tasks are placed: worker count, torch threads per task, whether tasks hold a GPU."""

    workers: int
    torch_threads: int  # 0: computed on the worker from threads_per_host
    use_gpu: bool
    threads_per_host: dict[str, int] = {}

    def threads_on(self, host: str) -> int:
        if self.torch_threads > 0:
            return self.torch_threads
        return max(1, machine_cores() // max(1, self.threads_per_host.get(host, 1)))


def plan_local(num_tasks: int, use_gpu: bool, max_workers: int | None = None) -> ClusterPlan:
    cores = machine_cores()
    if use_gpu:
        workers = max(1, min(torch.cuda.device_count(), num_tasks))
    else:
        workers = max(1, min(cores, num_tasks))
    if max_workers is not None:
        workers = max(1, min(workers, max_workers))
    return ClusterPlan(workers=workers, torch_threads=max(1, cores // workers), use_gpu=use_gpu)


def plan_remote(client: object, use_gpu: bool | None) -> ClusterPlan:
    """Plan for an existing cluster: each task divides its host's cores by the dask threads there."""
    info = client.scheduler_info()  # type: ignore[attr-defined]
    workers = info.get("workers", {})
    if not workers:
        raise UserError("The dask scheduler has no workers.", "Start workers with `dask worker tcp://HOST:8786` first.")
    has_gpu = any(w.get("resources", {}).get("GPU", 0) >= 1 for w in workers.values())
    if use_gpu and not has_gpu:
        raise UserError(
            "The run asks for CUDA but no worker of the dask cluster declares a GPU resource.",
            "Start one worker per GPU with `CUDA_VISIBLE_DEVICES=i dask worker tcp://HOST:8786 "
            "--nworkers 1 --nthreads 1 --resources GPU=1`, or set train.device=cpu.",
        )
    threads_per_host: dict[str, int] = {}
    for worker in workers.values():
        host = str(worker.get("host", ""))
        threads_per_host[host] = threads_per_host.get(host, 0) + int(worker.get("nthreads", 1))
    return ClusterPlan(workers=len(workers), torch_threads=0, use_gpu=bool(has_gpu if use_gpu is None else use_gpu),
                       threads_per_host=threads_per_host)


def task_resources(plan: ClusterPlan) -> dict[str, float] | None:
    return {"GPU": 1} if plan.use_gpu else None


def worker_environment() -> dict[str, object]:
    """What dask's nanny sets in a worker process before it starts, less MALLOC_TRIM_THRESHOLD_.

    Set to any value, that variable switches off glibc's adaptive mmap threshold: every tensor of a
    training step above 128 KiB is then mapped afresh and page-faulted in, step after step. A pack
    of 8 demo trials took 19.0 s in a dask worker with it and 13.2 s without (12.1 s in-process).
    """
    import dask
    import distributed  # noqa: F401  (loads distributed's defaults into dask.config first)

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


RESOURCE_TRACKER_WARNING = "ignore::UserWarning:multiprocessing.resource_tracker"


def quiet_resource_tracker() -> None:
    """Worker processes stopped by Ctrl-C leave their semaphores to multiprocessing's resource
    tracker, which removes them and, at exit, warns about them under the interruption message. The
    tracker is a process of its own, started later with this environment: only its warning is off."""
    current = os.environ.get("PYTHONWARNINGS", "")
    if RESOURCE_TRACKER_WARNING not in current:
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, RESOURCE_TRACKER_WARNING]))


@contextmanager
def dask_client(scheduler: str | None, plan: ClusterPlan, processes: bool = True) -> Iterator[object]:
    """A distributed Client: to `scheduler` if given, else to a LocalCluster built from `plan`."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as error:
            raise UserError(
                f"Cannot reach the dask scheduler at {scheduler} ({error}).",
                "Start it with `dask scheduler` and give its address, e.g. --scheduler tcp://HOST:8786.",
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    resources = task_resources(plan)
    quiet_resource_tracker()
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environment()}):
        cluster = LocalCluster(
            n_workers=plan.workers, threads_per_worker=1, processes=processes, resources=resources,
            dashboard_address=None, silence_logs=40,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def worker_setup(plan: ClusterPlan, device_name: str) -> str:
    """Inside a task: bound torch's threads and, on a multi-GPU worker host, pick this worker's GPU.
    The worker process will also stop zarr's IO thread cleanly when it exits (cache/io_thread.py)."""
    from distributed import get_worker

    stop_zarr_io_thread_at_exit()

    try:
        worker = get_worker()
        host, name = worker.address.split("://")[-1].rsplit(":", 1)[0], worker.name
    except ValueError:  # not inside a dask worker
        host, name = "", 0
    torch.set_num_threads(plan.threads_on(host))
    if device_name not in ("auto", "cuda") or not torch.cuda.is_available():
        return device_name
    index = int(name) % torch.cuda.device_count() if str(name).isdigit() else 0
    return f"cuda:{index}"


def in_daemon_process() -> bool:
    """Dask worker processes are daemonic and may not start DataLoader worker processes."""
    return bool(multiprocessing.current_process().daemon)
