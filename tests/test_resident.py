"""A resident cache (train.resident) serves the batches streaming would read, bit for bit: the same
runs, packs and folds; `auto` chooses as documented; a copy too large for the memory is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sweep_support import build_tiny_cache, tiny_config

import fpt.cache.reader
from fpt.cache.errors import UserError
from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.stages.core.memory import FreeRam
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.packed_training import train_pack
from fpt.stages.train.resident import CopySize, ResidentSamples, choose_residency
from fpt.stages.train.train_side import train_side

GB = 10**9


# ---------------------------------------------------------------- batches
@pytest.fixture(scope="module", params=["float16", "bfloat16", "int8", "int4"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    storage = StorageSettings(dtype=request.param, codec="zstd", codec_level=1, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 19, "val": 7, "test": 5}, selected=4, head_dim=8, side_store_size=16,
                                  storage=storage)
    return write_synthetic_cache(tmp_path_factory.mktemp(request.param), metadata)


def _epochs(batches: SplitBatches, count: int = 2) -> list[tuple]:
    """`count` epochs of batches, each copied as it is handed out (reused buffers are overwritten later)."""
    return [(b.indices.copy(), b.labels.copy(), b.side_images.copy(), b.keys.cpu().clone(), b.values.cpu().clone())
            for _ in range(count) for b in batches.batches(reuse=1)]


def _assert_same(got: list[tuple], expected: list[tuple]) -> None:
    assert len(got) == len(expected) > 2
    for mine, theirs in zip(got, expected):
        for a, b in zip(mine, theirs):
            assert np.asarray(a).dtype == np.asarray(b).dtype
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("on_device", [False, True])  # True: the copy as tensors, as on a GPU (here the CPU's)
@pytest.mark.parametrize("what", ["train", "balanced", "val", "fold"])
def test_resident_batches_are_streamings_bit_for_bit(store: Path, on_device: bool, what: str) -> None:
    reader = CacheReader(store)
    train_range, val_range = (np.arange(*reader.split_range(s)) for s in ("train", "val"))
    pooled = np.concatenate([train_range, val_range])
    split = {"train": "train", "balanced": "train", "val": "val", "fold": pooled[::3]}[what]
    settings = dict(batch_size=5, shuffle=what != "val", with_features=True, seed=7, buffer_shards=2,
                    balanced=what == "balanced")
    copy = ResidentSamples(reader, pooled, True, torch.device("cpu") if on_device else None)
    assert isinstance(copy.arrays["keys"], torch.Tensor if on_device else np.ndarray)
    _assert_same(_epochs(SplitBatches(reader, split, resident=copy, **settings)),
                 _epochs(SplitBatches(reader, split, **settings)))


def test_a_resident_copy_is_read_once_and_must_hold_its_samples(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reader = CacheReader(store)
    reads = []
    original = reader.read_stored_into
    monkeypatch.setattr(reader, "read_stored_into", lambda a, b, rows: reads.append((a, b)) or original(a, b, rows))
    train = np.arange(*reader.split_range("train"))
    copy = ResidentSamples(reader, train, True)
    assert sum(b - a for a, b in reads) == len(train) == copy.arrays["labels"].shape[0]  # the train split, no more
    batches = SplitBatches(reader, "train", batch_size=4, shuffle=True, with_features=True, resident=copy)
    _epochs(batches, 3)
    assert sum(b - a for a, b in reads) == len(train)  # three epochs, no read
    with pytest.raises(ValueError, match="lacks"):
        SplitBatches(reader, "val", batch_size=4, shuffle=False, with_features=True, resident=copy)


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resident")
    build_tiny_cache(root)
    return root


def _same_run(a: Path, b: Path) -> None:
    """Two run folders with the same epochs' metrics, final metrics, predictions and weights."""
    def epochs(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    def final(run: Path) -> dict:
        return {k: v for k, v in json.loads((run / "final_metrics.json").read_text()).items()
                if k not in ("run_dir", "seconds")}

    assert epochs(a) == epochs(b) and len(epochs(a)) == 2
    assert final(a) == final(b)
    predictions = sorted(path.name for path in a.glob("predictions_*.csv"))
    assert predictions and predictions == sorted(path.name for path in b.glob("predictions_*.csv"))
    for name in predictions:
        assert (a / name).read_text() == (b / name).read_text()
    for which in ("best", "last"):
        x, y = (load_file(str(run / "checkpoints" / f"{which}.safetensors")) for run in (a, b))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def _resident_record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["resident"]


@pytest.mark.parametrize("extra", [[], ["train.folds=3", "train.fold=2", "train.sampler=balanced"]],
                         ids=["split", "fold"])
def test_a_resident_run_ends_as_the_streamed_one(tiny_root: Path, extra: list[str], torch_threads,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    torch_threads(1)
    name = "fold" if extra else "split"
    streamed = train_side(tiny_config(tiny_root, [*extra, "train.resident=off", f"train.run_name={name}-off"]),
                          show_progress=False)
    reads = []
    original = fpt.cache.reader.CacheReader.read_stored_into
    monkeypatch.setattr(fpt.cache.reader.CacheReader, "read_stored_into",
                        lambda self, a, b, rows: reads.append((a, b)) or original(self, a, b, rows))
    resident = train_side(tiny_config(tiny_root, [*extra, "train.resident=ram", f"train.run_name={name}-ram"]),
                          show_progress=False)
    monkeypatch.undo()
    _same_run(streamed.run_dir, resident.run_dir)
    assert _resident_record(streamed.run_dir)["where"] == "off"
    record = _resident_record(resident.run_dir)
    assert record["where"] == "ram" and record["bytes"] > 0 and "in RAM" in record["why"]
    assert "samples: train.resident=ram" in (resident.run_dir / "train.log").read_text()
    # train + val read once for the 2 epochs; only the test split is streamed (once per evaluation)
    meta = fpt.cache.reader.read_metadata(resident.cache)
    test_start = meta.split_ranges["test"][0]
    assert sum(b - a for a, b in reads if a < test_start) == test_start


def test_a_resident_pack_ends_as_its_trials_streamed(tiny_root: Path, torch_threads) -> None:
    torch_threads(1)
    settings = [["train.lr=0.002"], ["train.lr=0.0005", "train.weight_decay=0.01"]]
    outcomes = {where: train_pack([tiny_config(tiny_root, s + [f"train.resident={where}", f"train.run_name=pack-{where}{i}"])
                                   for i, s in enumerate(settings)], isolate_failures=False)
                for where in ("off", "ram")}
    for streamed, resident in zip(outcomes["off"], outcomes["ram"]):
        assert streamed.result is not None and resident.result is not None
        _same_run(streamed.result.run_dir, resident.result.run_dir)
        assert _resident_record(resident.result.run_dir)["where"] == "ram"


# ---------------------------------------------------------------- the choice
SIZE = CopySize(samples=1000, features=4 * GB, rest=GB // 10)
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_auto_puts_the_copy_on_the_gpu_where_it_fits_in_half_its_free_memory() -> None:
    assert choose_residency("auto", SIZE, CUDA, free_device=int(8.2 * GB), available_ram=100 * GB).where == "device"
    # not on the GPU: RAM where it fits in half of this process's share of the available RAM
    chosen = choose_residency("auto", SIZE, CUDA, free_device=7 * GB, available_ram=9 * GB)
    assert chosen.where == "ram" and "4.10 GB" in chosen.why
    assert choose_residency("auto", SIZE, CUDA, free_device=7 * GB, available_ram=8 * GB).where == "off"


def test_auto_on_the_cpu_holds_the_copy_in_ram_where_it_fits_in_half_this_process_s_share() -> None:
    assert choose_residency("auto", SIZE, CPU, None, available_ram=9 * GB).where == "ram"
    assert choose_residency("auto", SIZE, CPU, None, available_ram=9 * GB, share=0.5).where == "off"
    assert choose_residency("auto", SIZE, CPU, None, available_ram=17 * GB, share=0.5).where == "ram"
    streamed = choose_residency("auto", SIZE, CPU, None, available_ram=8 * GB)
    assert streamed.where == "off" and "streamed" in streamed.why and streamed.record()["bytes"] is None


def test_explicit_settings_are_followed_where_the_memory_allows() -> None:
    assert choose_residency("off", SIZE, CUDA, 100 * GB, 100 * GB).where == "off"
    assert choose_residency("ram", SIZE, CUDA, 100 * GB, 5 * GB).where == "ram"  # beyond auto's half, within 90 %
    assert choose_residency("device", SIZE, CUDA, 5 * GB, 100 * GB).where == "device"
    on_cpu = choose_residency("device", SIZE, CPU, None, 100 * GB)  # the CPU's memory is RAM
    assert on_cpu.where == "ram" and "CPU" in on_cpu.why
    side_only = CopySize(samples=1000, features=0, rest=GB)  # no keys and values: nothing for the GPU
    assert choose_residency("auto", side_only, CUDA, 100 * GB, 100 * GB).where == "ram"


def test_a_copy_too_large_for_the_memory_is_refused_with_what_to_do() -> None:
    with pytest.raises(UserError) as refused:
        choose_residency("ram", SIZE, CPU, None, available_ram=4 * GB)
    message = refused.value.paragraph()
    assert "4.10 GB" in message and "4.00 GB of RAM is available" in message
    assert "train.resident=auto" in message and "off" in message
    with pytest.raises(UserError, match="free"):
        choose_residency("device", SIZE, CUDA, free_device=4 * GB, available_ram=100 * GB)


def test_a_run_asking_for_more_ram_than_there_is_stops_before_training(tiny_root: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fpt.stages.train.resident

    monkeypatch.setattr(fpt.stages.train.resident, "free_ram", lambda: FreeRam(1000, False))  # bytes
    with pytest.raises(UserError, match="train.resident=ram asks to hold"):
        train_side(tiny_config(tiny_root, ["train.resident=ram", "train.run_name=too-large"]), show_progress=False)
    assert not (tiny_root / "runs" / "too-large").exists()
