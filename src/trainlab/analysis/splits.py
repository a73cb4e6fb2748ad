"""Which split is "valid" and which is "test": the data splits each run trained and was
measured on, their sizes and where each came from (the run summary's ``splits``, written by
the engine from :func:`trainlab.components.datasets.split_summary`).

On GLUE (test labels hidden, -1) the dataset's validation split becomes "test" and "valid" is a
share of train held out: a study's "validation accuracy" is then in the test column.  The
report's "Data splits" table and `trainlab show` say so.
"""

from __future__ import annotations

from typing import Any

from trainlab.analysis.frames import SweepFrames, flatten
from trainlab.analysis.tables import Column, Table

SPLIT_NAMES = ("train", "valid", "test")
# What each split is used for, in the report's and `show`'s words.
ROLES = {"train": "trains the model (train columns)",
         "valid": "picks the best epoch (valid columns, curves)",
         "test": "evaluated once, best-validation checkpoint (test columns)"}


def split_rows(splits: Any) -> list[tuple[str, str, str]]:
    """(split, size, source) per split of a run summary's ``splits`` ([] when absent: a run
    recorded before trainlab recorded them, or one still running)."""
    if not isinstance(splits, dict):
        return []
    rows = []
    for name in SPLIT_NAMES:
        part = splits.get(name)
        if not isinstance(part, dict):
            continue
        size = part.get("size")
        unit = str(part.get("unit") or "examples")
        text = f"{int(size):,} {unit}" if isinstance(size, int | float) else "-"
        rows.append((name, text, str(part.get("source") or "not recorded")))
    return rows


def data_label(config: Any) -> str:
    """A dataset as its config names it: ``hf glue/sst2``, ``digits``, ``npz data.npz``."""
    flat = flatten(config if isinstance(config, dict) else {})
    name = str(flat.get("data.name") or "?")
    where = flat.get("data.path") or flat.get("data.target")
    if where:
        name += f" {where}"
    if flat.get("data.config"):
        name += f"/{flat['data.config']}"
    return name


def splits_table(frames: SweepFrames) -> Table | None:
    """One block of rows per distinct (dataset, splits) among the sweep's runs: split, size,
    source, role, and the runs that used it (None when no run recorded its splits)."""
    blocks: dict[str, dict[str, Any]] = {}
    for _, run in frames.runs.sort_values("index").iterrows():
        splits = (run["summary"] or {}).get("splits")
        rows = split_rows(splits)
        if not rows:
            continue
        label = data_label(run["config"])
        key = repr((label, rows))
        block = blocks.setdefault(key, {"label": label, "rows": rows, "indices": []})
        block["indices"].append(run["index"])
    if not blocks:
        return None
    cols = [Column("data", "data", "text", "data: the dataset as the config names it"),
            Column("split", "split", "text"),
            Column("size", "size", "text", "size: examples in the split (sequences for "
                   "language modelling), after data.limit"),
            Column("source", "from", "text", "from: where the split came from (the dataset's "
                   "own split, or a share of it held out by data.split_seed)"),
            Column("role", "used for", "text"),
            Column("indices", "runs", "text", "runs: the run numbers that used these splits")]
    table_rows: list[dict[str, Any]] = []
    groups = []
    everyone = len(blocks) == 1
    for number, block in enumerate(blocks.values()):
        for name, size, source in block["rows"]:
            table_rows.append({"data": block["label"], "split": name, "size": size,
                               "source": source, "role": ROLES[name],
                               "indices": "all" if everyone else block["indices"]})
            groups.append(str(number))  # a rule between the blocks
    caption = ("The data splits of each dataset, their sizes and where each came from. "
               "Columns: " + "; ".join(c.explain for c in cols if c.explain) + ". "
               + _swap_note(table_rows))
    return Table("splits", "Data splits", cols, table_rows, [None] * len(table_rows),
                 groups, caption.strip())


def splits_sentence(frames: SweepFrames) -> str:
    """One sentence for the summary table's caption: which split is valid and which is test
    (with one dataset in the sweep), or a pointer to the splits table ("" when not recorded)."""
    table = splits_table(frames)
    if table is None:
        return ""
    if len(set(table.groups)) > 1:
        return "Valid and test splits of each dataset: see the Data splits table."
    by = {r["split"]: r for r in table.rows}
    parts = [f"{name}: {by[name]['source']} ({by[name]['size']})"
             for name in ("valid", "test") if name in by]
    return "Splits: " + "; ".join(parts) + "."


def _swap_note(rows: list[dict[str, Any]]) -> str:
    """Say it where the dataset's own validation split is the test split (GLUE)."""
    swapped = any(r["split"] == "test" and "split validation" in str(r["source"])
                  for r in rows)
    if not swapped:
        return ""
    return ("Where the dataset's test labels are hidden (GLUE), its validation split is the "
            "test split here and the valid split is held out of train: a paper's "
            "\"validation\" figures correspond to the test columns.")


__all__ = ["ROLES", "SPLIT_NAMES", "data_label", "split_rows", "splits_sentence",
           "splits_table"]
