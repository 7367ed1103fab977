"""Overlapped shard writes (extract.overlap_writes) must store exactly what sequential writes store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fpt.cache.reader import CacheReader
from fpt.pipeline.config import load_config
from fpt.stages.extract.run import run_extract

ROOT = Path(__file__).resolve().parent.parent


def _extract(tmp_path: Path, overlap: bool) -> Path:
    config = load_config(ROOT / "pipeline.yaml", [
        f"dataset.data_root={tmp_path / 'data'}", f"cache.root={tmp_path / f'cache-{overlap}'}",
        "demo.num_train=12", "demo.num_val=2", "demo.num_test=2", "demo.image_size=128",
        "extract.input_size=64", "extract.num_workers=0", "extract.batch_size=3",
        "cache.shard_size=4", "cache.chunk_size=2", f"extract.overlap_writes={str(overlap).lower()}",
    ], "demo")
    return run_extract(config, show_progress=False).path


def test_overlapped_writes_store_the_same_arrays_and_complete_every_shard(tmp_path: Path) -> None:
    overlapped = CacheReader(_extract(tmp_path, True))
    sequential = CacheReader(_extract(tmp_path, False))
    assert overlapped.metadata.complete and sequential.metadata.complete
    assert overlapped.group["shard_complete"][:].tolist() == [1] * overlapped.metadata.num_shards
    count = sequential.metadata.num_samples
    a, b = overlapped.read(0, count), sequential.read(0, count)
    for name in ("keys", "values", "side_images", "labels"):
        np.testing.assert_array_equal(a[name], b[name])
    assert np.abs(a["keys"].astype(np.float32)).sum() > 0  # every sample was written, none left at the fill value
    assert (np.abs(a["keys"].astype(np.float32)).reshape(count, -1).max(axis=1) > 0).all()


def test_decode_workers_auto_is_none_on_cpu_and_some_on_a_gpu(monkeypatch) -> None:
    import torch

    from fpt.pipeline.config import load_config
    from fpt.stages.core.devices import decode_workers

    assert load_config(None, [], None).extract.num_workers == "auto"
    assert load_config(None, ["extract.num_workers=3"], None).extract.num_workers == 3
    assert decode_workers("auto", torch.device("cpu")) == 0
    assert decode_workers(3, torch.device("cpu")) == 3
    monkeypatch.setattr("fpt.stages.core.devices.machine_cores", lambda: 16)
    assert decode_workers("auto", torch.device("cuda")) == 8
    monkeypatch.setattr("fpt.stages.core.devices.machine_cores", lambda: 2)
    assert decode_workers("auto", torch.device("cuda")) == 1
