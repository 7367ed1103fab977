"""`fpt cache`: list, transcode, compact and verify the feature caches.

Each command imports the stages it runs when it runs (pipeline/cli.py says why).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fpt.cache.errors import UserError
from fpt.pipeline.cli_options import ConfigOption, QuietOption, SetOption, console, load_settings

cache_app = typer.Typer(no_args_is_help=True, help="Inspect, check and re-encode the feature caches.")


@cache_app.command("list")
def cache_list(config: ConfigOption = None, set_: SetOption = None) -> None:
    """List the caches under cache.root with their size and settings."""
    from fpt.cache.catalog import folder_bytes, list_caches
    from fpt.cache.label_table import table_digests

    cfg = load_settings(config, set_, None)
    caches = list_caches(cfg.cache.root)
    rows = []
    for path, meta, problem in caches:
        size = f"{folder_bytes(path) / 1e6:.1f} MB"
        if meta is None:
            rows.append((path.name, ["?"] * 7 + [size, problem or "unreadable"], ""))
            continue
        state = ("complete" if meta.complete else "INCOMPLETE") + ("" if meta.has_token_indices else ", no token indices")
        if meta.by_content:  # rows of image contents; `samples` counts the latest label table's
            state += f", {len(table_digests(path))} label table(s)"
        sources = ", ".join(meta.sources) or "not recorded (running `fpt extract` on the same images records it)"
        rows.append((path.name, [meta.dataset, meta.lpm.name, ",".join(map(str, meta.extraction.layers)),
                                 f"{meta.extraction.token_ratio:g}", meta.extraction.importance,
                                 f"{meta.storage.dtype}/{meta.storage.codec}", str(meta.num_samples), size, state],
                     sources))
    if console.width >= 120:  # a table where it fits; a store name is copied into commands, so never cut
        table = Table(title=f"Caches under {cfg.cache.root}")
        table.add_column("store", no_wrap=True, min_width=max([len(name) for name, _, _ in rows] + [5]))
        for column in ("dataset", "LPM", "layers", "ratio", "importance", "dtype", "samples", "size", "state"):
            table.add_column(column, overflow="fold")
        for name, cells, _ in rows:
            table.add_row(name, *cells)
        console.print(table)
        for name, _, sources in rows:
            if sources:
                console.print(f"{name}: images from {sources}", highlight=False, soft_wrap=True)
        return
    # a narrow terminal or a log file (80 columns): a few whole lines per store
    console.print(f"Caches under {cfg.cache.root}: {len(rows)}", highlight=False, soft_wrap=True)
    for name, cells, sources in rows:
        dataset, lpm, layers, ratio, importance, dtype, samples, size, state = cells
        console.print(f"\n{name}", highlight=False, soft_wrap=True)
        console.print(f"  {state}, {samples} images, {size}, {dtype}", highlight=False, soft_wrap=True)
        console.print(f"  {dataset}; {lpm}, layers {layers}, ratio {ratio}, {importance}", highlight=False,
                      soft_wrap=True)
        if sources:
            console.print(f"  images from {sources}", highlight=False, soft_wrap=True)


@cache_app.command("transcode")
def cache_transcode(
    path: Annotated[Path, typer.Argument(help="A complete cache store.")],
    config: ConfigOption = None,
    set_: SetOption = None,
    quiet: QuietOption = False,
) -> None:
    """Re-write a cache in the storage settings of the configuration (cache.dtype, codec, shards), without the LPM."""
    from fpt.cache.catalog import folder_bytes
    from fpt.cache.reader import read_metadata
    from fpt.cache.transcode import transcode
    from fpt.stages.extract.settings_check import storage_settings

    cfg = load_settings(config, set_, None)
    storage = storage_settings(cfg.cache)
    # an incomplete source is refused by the reader inside transcode, with its own message
    written = transcode(path, cfg.cache.root, storage, show_progress=not quiet,
                        resume_command="the same `fpt cache transcode` command")
    if written.resolve() == path.resolve():
        console.print(f"{path} is already stored as {storage.dtype}/{storage.codec}: nothing to do.")
        return
    source = read_metadata(path)
    before, after = folder_bytes(path), folder_bytes(written)
    console.print(f"[green]Cache written[/green]: {written} ({storage.dtype}/{storage.codec}, {after / 1e6:.1f} MB; "
                  f"the source, {source.storage.dtype}/{source.storage.codec}, is {before / 1e6:.1f} MB and is kept).")


@cache_app.command("compact")
def cache_compact(
    path: Annotated[Path, typer.Argument(help="A complete cache store (format 4).")],
    table: Annotated[Optional[str], typer.Option("--table", help="The label table whose order to lay the rows out in (its sha256 or a prefix; default: the latest one written).")] = None,
    quiet: QuietOption = False,
) -> None:
    """Lay a grown store's rows out again in a label table's order (each split consecutive, whole shards), without the LPM; resumable. Train from it afterwards, not during."""
    from fpt.cache.catalog import folder_bytes
    from fpt.cache.compact import compact

    result = compact(path, table, show_progress=not quiet)
    if result.already_compact:
        console.print(f"{path} is already laid out in the order of label table {result.label_table[:16]}: nothing to do.")
        return
    console.print(f"[green]Compacted[/green]: {path}, {result.rows_after} rows in the order of label table "
                  f"{result.label_table[:16]} (was {result.rows_before} rows; {folder_bytes(path) / 1e6:.1f} MB).",
                  highlight=False)


@cache_app.command("verify")
def cache_verify(
    path: Annotated[Optional[Path], typer.Argument(help="A cache store (default: every cache under cache.root).")] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Re-check every shard of a cache against the checksums recorded when it was written."""
    from fpt.cache.catalog import list_caches
    from fpt.cache.integrity import verify_store
    from fpt.cache.reader import read_metadata

    cfg = load_settings(config, set_, None)
    paths = [path] if path is not None else [p for p, _, _ in list_caches(cfg.cache.root)]
    if not paths:
        raise UserError(f"There is no cache under {cfg.cache.root}.", "Give the store's path: fpt cache verify PATH.")
    problems = []
    for store in paths:
        report = verify_store(store, read_metadata(store))
        for damaged in report.damaged:
            problems.append(
                f"{store.name} shard {damaged.shard} ({', '.join(damaged.arrays)}) is damaged: samples "
                + ", ".join(damaged.sample_ids)
            )
        if report.incomplete_shards:
            problems.append(f"{store.name} is incomplete: shards {report.incomplete_shards[:10]} are not written yet")
        if report.ok:
            console.print(f"[green]OK[/green] {store}: {report.shards_checked} shards match their checksums.")
    if problems:
        raise UserError(
            "Cache verification failed: " + "; ".join(problems) + ".",
            "Delete a damaged store and run `fpt extract` again (or finish an incomplete one by re-running it).",
        )
