"""One store serves every labelling, split and addition of images: the LPM runs only on contents the
store lacks, a relabelling writes only a label table, and compaction lays a grown store out as a fresh
extraction would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cache_testing import as_legacy, stored_arrays
from PIL import Image
from tiny import TRAINING, tiny_config

import fpt.stages.lpm.token_selection
from fpt.cache.compact import compact
from fpt.cache.errors import UserError
from fpt.cache.integrity import verify_store
from fpt.cache.label_table import table_digests
from fpt.cache.metadata import StorageSettings
from fpt.cache.reader import CacheReader, read_metadata
from fpt.cache.synthetic import synthetic_metadata, write_synthetic_cache
from fpt.cache.writer import ShardWriter
from fpt.stages.datasets.fingerprint import dataset_fingerprint
from fpt.stages.datasets.registry import resolve_dataset
from fpt.stages.extract.run import run_extract
from fpt.stages.train.cache_batches import SplitBatches
from fpt.stages.train.train_side import train_side


@pytest.fixture
def lpm_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch sizes the LPM's forward ran on, in order."""
    calls: list[int] = []
    forward = fpt.stages.lpm.token_selection.TokenSelectingLPM.forward

    def counted(self, images, *args, **kwargs):
        calls.append(len(images))
        return forward(self, images, *args, **kwargs)

    monkeypatch.setattr(fpt.stages.lpm.token_selection.TokenSelectingLPM, "forward", counted)
    return calls


def _demo(root: Path) -> Path:
    return root / "data" / "demo"


def _new_image(source: Path, target: Path, seed: int) -> None:
    """A new image content: `source` with a block of 8 x 8 pixels inverted (where `seed` says)."""
    pixels = np.array(Image.open(source).convert("RGB"))
    row = 8 * (seed % 8) + 32
    pixels[row : row + 8, 32:40] = 255 - pixels[row : row + 8, 32:40]
    Image.fromarray(pixels).save(target)


def _features_by_id(path: Path, table: str | None = None) -> dict[str, np.ndarray]:
    reader = CacheReader(path, table)
    keys = reader.read(0, reader.metadata.num_samples)["keys"]
    return dict(zip(reader.sample_ids(), keys))


def test_relabel_runs_no_lpm_and_the_run_records_the_new_table(tmp_path: Path, lpm_images: list[int]) -> None:
    config = tiny_config(tmp_path, *TRAINING)
    first = run_extract(config, show_progress=False)
    assert sum(lpm_images) == 24 and first.computed_samples == 24
    before = train_side(config, show_progress=False)
    train = sorted((_demo(tmp_path) / "train").glob("*/*.png"))  # 4 a class
    test = sorted((_demo(tmp_path) / "test").glob("*/*.png"))  # 2 a class
    for image in [train[0], train[4], train[8], test[0], test[2]]:  # relabel 5 images: into the next class's folder
        classes = sorted(p.name for p in image.parent.parent.iterdir() if p.is_dir())
        other = classes[(classes.index(image.parent.name) + 1) % len(classes)]
        shutil.move(image, image.parent.parent / other / image.name)
    lpm_images.clear()
    second = run_extract(config, show_progress=False)
    assert lpm_images == [] and second.computed_samples == 0 and second.path == first.path
    assert second.label_table != first.label_table and second.metadata.num_rows == 24
    assert table_digests(first.path) == sorted([first.label_table, second.label_table])
    after = train_side(config, show_progress=False)
    recorded = [json.loads((run.run_dir / "run.json").read_text())["label_table"] for run in (before, after)]
    assert recorded == [first.label_table, second.label_table]
    # both labellings stay readable, each run with its own
    old, new = (CacheReader(first.path, table) for table in recorded)
    assert old.metadata.class_counts["test"] != new.metadata.class_counts["test"]
    assert read_metadata(first.path, first.label_table).label_table == first.label_table


def test_added_changed_removed_and_duplicate_images(tmp_path: Path, lpm_images: list[int]) -> None:
    config = tiny_config(tmp_path)
    first = run_extract(config, show_progress=False)
    features = _features_by_id(first.path)
    demo = _demo(tmp_path)
    train = sorted((demo / "train").glob("*/*.png"))
    # added: three new images; changed: one file's bytes; removed: two files; duplicate: a copy of one under a new name
    for i in range(3):
        _new_image(train[i], train[i].with_name(f"added{i}.png"), seed=i)
    _new_image(train[5], train[5], seed=7)
    train[6].unlink()
    sorted((demo / "test").glob("*/*.png"))[0].unlink()
    shutil.copy(train[8], train[8].with_name("copy_of_8.png"))
    lpm_images.clear()
    second = run_extract(config, show_progress=False)
    assert sum(lpm_images) == 4 and second.computed_samples == 4  # three added, one changed; the copy is no new content
    reader = CacheReader(second.path)
    assert reader.metadata.num_samples == 24 + 3 - 2 + 1
    ids = reader.sample_ids()
    now = _features_by_id(second.path)
    changed = str(train[5].relative_to(demo))
    for sample_id in ids:
        if sample_id in features and sample_id != changed:
            np.testing.assert_array_equal(now[sample_id], features[sample_id], err_msg=sample_id)  # kept, not recomputed
    assert not np.array_equal(now[changed], features[changed])
    duplicate = str(train[8].with_name("copy_of_8.png").relative_to(demo))
    assert reader.rows[ids.index(duplicate)] == reader.rows[ids.index(str(train[8].relative_to(demo)))]
    assert str(train[6].relative_to(demo)) not in ids  # removed: not used (its row stays for the old table)
    # the old table still reads what it read
    old = _features_by_id(second.path, first.label_table)
    for sample_id, value in features.items():
        np.testing.assert_array_equal(old[sample_id], value)
    lpm_images.clear()
    assert run_extract(config, show_progress=False).reused and lpm_images == []


def test_an_interrupted_append_resumes_with_only_the_new_images(tmp_path: Path, lpm_images: list[int],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tmp_path)
    run_extract(config, show_progress=False)
    train = sorted((_demo(tmp_path) / "train").glob("*/*.png"))
    for i in range(6):
        _new_image(train[i], train[i].with_name(f"added{i}.png"), seed=i)
    write = ShardWriter.write_shard
    written: list[int] = []

    def stop_after_one(self, shard, *arrays):
        if written:
            raise KeyboardInterrupt
        written.append(shard)
        write(self, shard, *arrays)

    monkeypatch.setattr(ShardWriter, "write_shard", stop_after_one)
    lpm_images.clear()
    with pytest.raises(KeyboardInterrupt):
        run_extract(config, show_progress=False)
    monkeypatch.setattr(ShardWriter, "write_shard", write)
    first_try = sum(lpm_images)
    lpm_images.clear()
    resumed = run_extract(config, show_progress=False)
    assert resumed.computed_samples == sum(lpm_images) == 2 and first_try >= 4  # 6 new rows: shards of 4, one kept
    assert resumed.metadata.complete and resumed.metadata.num_samples == 30


def test_compaction_gives_the_fresh_extraction_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fixed normalisation: `auto`'s would be the grown train split's in the fresh store, the first one's in the grown
    fixed = (*TRAINING, "dataset.normalization=imagenet")
    config = tiny_config(tmp_path, *fixed)
    run_extract(config, show_progress=False)
    train = sorted((_demo(tmp_path) / "train").glob("*/*.png"))
    for i in range(5):
        _new_image(train[i], train[i].with_name(f"added{i}.png"), seed=i)
    grown = run_extract(config, show_progress=False)
    reader = CacheReader(grown.path)
    assert not reader.contiguous(*reader.split_range("train"))  # the added images' rows come last
    fresh = run_extract(tiny_config(tmp_path, *fixed, f"cache.root={tmp_path / 'fresh'}"), show_progress=False)
    grown_run = train_side(config, show_progress=False)

    write = ShardWriter.write_stored_shard
    written: list[int] = []

    def stop_after_two(self, shard, stored):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(shard)
        write(self, shard, stored)

    monkeypatch.setattr(ShardWriter, "write_stored_shard", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        compact(grown.path)
    monkeypatch.setattr(ShardWriter, "write_stored_shard", lambda self, shard, stored: (written.append(shard),
                                                                                         write(self, shard, stored)))
    result = compact(grown.path)
    assert written[:2] == [0, 1] and 0 not in written[2:] and 1 not in written[2:]  # resumed, not restarted
    assert result.rows_after == 29 and compact(grown.path).already_compact
    reader, clean = CacheReader(grown.path), CacheReader(fresh.path)
    assert all(reader.contiguous(*reader.split_range(split)) for split in ("train", "val", "test"))
    assert reader.sample_ids() == clean.sample_ids() and reader.metadata.label_table == clean.metadata.label_table
    got, want = stored_arrays(grown.path), stored_arrays(fresh.path)
    for name in ("keys", "values", "token_indices", "side_images"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    batches = [SplitBatches(r, "train", 4, shuffle=True, with_features=True, seed=3) for r in (reader, clean)]
    for a, b in zip(*batches):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.keys.numpy(), b.keys.numpy())
    compacted_run = train_side(config, show_progress=False)
    fresh_run = train_side(config, fresh.path, show_progress=False)
    assert compacted_run.test_best == fresh_run.test_best == grown_run.test_best


def test_a_store_of_format_3_is_read_and_compaction_names_the_command(tmp_path: Path) -> None:
    storage = StorageSettings(dtype="float16", codec="zstd", codec_level=1, shard_size=4, chunk_size=2)
    metadata = synthetic_metadata({"train": 6, "val": 2, "test": 2}, selected=3, head_dim=8, side_store_size=16,
                                  storage=storage, format_version=3)
    path = write_synthetic_cache(tmp_path, metadata)
    reader = CacheReader(path)
    assert reader.metadata.format_version == 3 and reader.read(0, 10)["keys"].shape[0] == 10
    with pytest.raises(UserError) as caught:
        compact(path)
    assert "format version 3" in caught.value.paragraph() and "fpt extract" in caught.value.paragraph()


def test_a_format_3_store_of_the_same_scan_is_upgraded_without_the_lpm(tmp_path: Path, lpm_images: list[int]) -> None:
    config = tiny_config(tmp_path)
    current = run_extract(config, show_progress=False)
    old = as_legacy(current.path, 3, dataset_fingerprint(resolve_dataset(config, show_progress=False).samples))
    want = stored_arrays(current.path)
    shutil.rmtree(current.path)
    lpm_images.clear()
    upgraded = run_extract(config, show_progress=False)
    assert lpm_images == [] and upgraded.transcoded_from == old and upgraded.path == current.path
    assert any("format 3" in note for note in upgraded.notes) and old.exists()
    got = stored_arrays(upgraded.path)
    for name in ("keys", "values", "token_indices", "side_images", "contents"):
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert "labels" not in got and verify_store(upgraded.path, read_metadata(upgraded.path)).ok
    assert CacheReader(upgraded.path).sample_ids() == CacheReader(old).sample_ids()
    assert upgraded.label_table == current.label_table


def test_training_refuses_labels_that_changed_since_the_last_extraction(tmp_path: Path, lpm_images: list[int]) -> None:
    config = tiny_config(tmp_path, *TRAINING)
    run_extract(config, show_progress=False)
    labels = _demo(tmp_path) / "labels.csv"  # the same images as a CSV dataset, so that a label is one cell to change
    rows = ["path,label,split"] + [f"{p.relative_to(_demo(tmp_path))},{p.parent.name},{p.parent.parent.name}"
                                   for p in sorted(_demo(tmp_path).glob("*/*/*.png"))]
    labels.write_text("\n".join(rows) + "\n")
    names = sorted({row.split(",")[1] for row in rows[1:]})
    csv_config = tiny_config(tmp_path, *TRAINING, "dataset.name=folder", f"dataset.csv={labels}",
                             f"dataset.data_root={_demo(tmp_path)}", f"dataset.classes=[{','.join(names)}]")
    run_extract(csv_config, show_progress=False)
    relabelled = rows[:]
    train = [index for index, row in enumerate(rows) if row.endswith(",train")]
    for index in train[:2]:  # two train images into the next class
        path, label, split = relabelled[index].split(",")
        relabelled[index] = f"{path},{names[(names.index(label) + 1) % len(names)]},{split}"
    path, label, _ = relabelled[train[2]].split(",")
    relabelled[train[2]] = f"{path},{label},val"  # and one moved to val
    labels.write_text("\n".join(relabelled) + "\n")
    with pytest.raises(UserError, match="2 relabelled, 1 moved to another split.*old labels") as refused:
        train_side(csv_config, show_progress=False)
    assert "fpt extract --dataset folder --set dataset.csv=" in refused.value.fix
    lpm_images.clear()
    run_extract(csv_config, show_progress=False)  # writes the new table, runs no LPM
    assert lpm_images == []
    result = train_side(csv_config, show_progress=False)
    run = json.loads((result.run_dir / "run.json").read_text())
    assert sum(run["train_class_counts"]) == 11  # 12 train images, one moved to val
