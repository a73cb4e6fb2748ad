"""Generate the reference blocks that ``trainlab.cli.reference`` does not: the store's schema
(docs/reference/store.md) and the sweep file's own fields with the ``search:`` section
(docs/reference/config.md).

    python -m docs.gen_reference            # print the blocks
    python -m docs.gen_reference --update   # rewrite them in their pages

Each block lies between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.  For the store it
creates an empty store in a temporary directory (so every migration runs, as for a user's
store), reads each table's columns from SQLite itself, the run statuses from
``trainlab.records`` and the schema version from ``trainlab.store.sqlite``.  Only the one-line
meaning of each column is written here, and a column without one fails the generation (and the
test that keeps the pages equal to the code: tests/unit/test_docs.py).  The sweep's fields are
read from ``SweepConfig`` (names, types, defaults) and the search section's from
``trainlab.search.spec`` (fields, methods, pruners, space forms, metrics); again only the
meanings are written here, and a field without one fails.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import tempfile
from pathlib import Path

REFERENCE = Path(__file__).resolve().parent / "reference"

TABLES: dict[str, str] = {
    "meta": "The store's own settings",
    "runs": "One row per run (a run may belong to several sweeps)",
    "sweeps": "One row per sweep name",
    "sweep_runs": "Which runs a sweep has, in its order (rerunning a changed grid updates it; "
                  "older runs stay in the store)",
    "metrics": "One row per recorded value (keys: [metric keys](metrics.md))",
    "lr_ranges": "One row per LR range test ([LR range test](../guides/lr-range-test.md))",
    "lr_range_sweeps": "Which sweep used which range test",
}

COLUMNS: dict[tuple[str, str], str] = {
    ("meta", "key"): "`schema_version`",
    ("meta", "value"): "its value",
    ("runs", "run_id"): "hash of the run's canonical resolved config",
    ("runs", "config"): "the resolved config (JSON)",
    ("runs", "status"): "one of the statuses below",
    ("runs", "created"): "when the run was first planned (Unix seconds)",
    ("runs", "started"): "when it last started training",
    ("runs", "finished"): "when it ended",
    ("runs", "error"): "the traceback or message of a failed, diverged or oom run",
    ("runs", "env"): "package versions, git commit, device, host (JSON)",
    ("runs", "summary"): "the run's summary: best and test metrics, times, memory, notes (JSON)",
    ("runs", "host"): "the host of the process that holds or held the run",
    ("runs", "pid"): "that process's id",
    ("runs", "attempts"): "how many times the run was started",
    ("runs", "heartbeat"): "when the run last wrote (a stale one on another host has crashed)",
    ("runs", "estimate"): "its predicted memory and time, made before it trained (JSON)",
    ("runs", "stopped_epoch"): "for a `pruned` search trial, the epoch its pruner stopped it "
                               "at ([search](../guides/search.md)); NULL otherwise",
    ("sweeps", "name"): "the sweep's `name:`",
    ("sweeps", "config"): "the sweep file as last run (JSON)",
    ("sweeps", "varied"): "the dotted keys its runs vary (JSON)",
    ("sweeps", "created"): "first run",
    ("sweeps", "updated"): "last run",
    ("sweep_runs", "sweep"): "sweep name",
    ("sweep_runs", "run_id"): "run id",
    ("sweep_runs", "idx"): "the run's index in the sweep",
    ("sweep_runs", "overrides"): "the run's varied values, e.g. `{\"optimizer.name\": \"sgd\"}`",
    ("metrics", "run_id"): "run id",
    ("metrics", "key"): "metric key, e.g. `valid/loss`",
    ("metrics", "step"): "optimizer step (0 for values recorded at the start)",
    ("metrics", "epoch"): "epoch",
    ("metrics", "time"): "seconds since the run started (eval included; continued on resume)",
    ("metrics", "value"): "the value (SQLite reads a NaN back as NULL)",
    ("lr_ranges", "range_id"): "hash of what shapes the curve (data, model, optimizer without "
                               "its LR, fine-tuning, device, ramp settings)",
    ("lr_ranges", "config"): "the config it ran (JSON)",
    ("lr_ranges", "settings"): "the test's settings (JSON)",
    ("lr_ranges", "status"): "ok, untrusted or diverged",
    ("lr_ranges", "result"): "curve, smoothed curve, stop, steps, seconds, suggestions, flags "
                             "(JSON)",
    ("lr_ranges", "env"): "environment (JSON)",
    ("lr_ranges", "created"): "when it ran",
    ("lr_range_sweeps", "sweep"): "sweep name",
    ("lr_range_sweeps", "range_id"): "range test id",
    ("lr_range_sweeps", "label"): "the sweep's varied values for the runs it served (JSON)",
}

STATUSES: dict[str, str] = {
    "pending": "planned, not started",
    "running": "a live process trains it (one whose heartbeat is stale is taken over)",
    "ok": "finished; tested on its best-validation checkpoint",
    "failed": "raised; its traceback is in `error`; retried by a rerun",
    "diverged": "its loss turned non-finite; kept as a result",
    "interrupted": "stopped by Ctrl-C or a signal; a rerun resumes it from its last checkpoint",
    "oom": "ran out of memory; retried by a rerun",
    "pruned": "a [search](../guides/search.md) trial its pruner stopped early (`stopped_epoch`)",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def store_markdown() -> str:
    """The schema block: schema version, tables with their columns, and run statuses."""
    from trainlab.records import DONE
    from trainlab.records import STATUSES as CODE_STATUSES
    from trainlab.store.sqlite import SCHEMA_VERSION, open_store

    missing_status = [s for s in CODE_STATUSES if s not in STATUSES]
    if missing_status:
        raise SystemExit(f"docs/gen_reference.py: describe the run status(es) {missing_status}")
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "store")
        db = store.db_path
        close = getattr(store, "close", None)
        if callable(close):
            close()
        conn = sqlite3.connect(db)
        try:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
                "ORDER BY rowid")]
            columns = {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
        finally:
            conn.close()
    lines = [f"Schema version {SCHEMA_VERSION} (older stores are migrated when opened).", ""]
    undocumented = []
    for table in tables:
        if table not in TABLES:
            undocumented.append(table)
            continue
        lines += [f"#### `{table}`", "", TABLES[table] + ".", "",
                  "| column | type | key | meaning |", "|---|---|---|---|"]
        for _cid, name, type_, notnull, _default, pk in columns[table]:
            meaning = COLUMNS.get((table, name))
            if meaning is None:
                undocumented.append(f"{table}.{name}")
                continue
            key = "primary" if pk else ""
            kind = f"{type_}{' NOT NULL' if notnull and not pk else ''}"
            lines.append(f"| `{name}` | {kind} | {key} | {_cell(meaning)} |")
        lines.append("")
    if undocumented:
        raise SystemExit(f"docs/gen_reference.py: describe {undocumented} in TABLES / COLUMNS")
    lines += ["#### Run statuses", "", "| status | meaning |", "|---|---|"]
    lines += [f"| `{s}` | {_cell(STATUSES[s])} |" for s in CODE_STATUSES]
    lines += ["", "A rerun skips " + ", ".join(f"`{s}`" for s in DONE) + " runs and trains "
              "the others again (an interrupted one from its last checkpoint).", ""]
    return "\n".join(lines)


SWEEP_FIELDS: dict[str, str] = {
    "name": "the sweep's name: its runs' group in the store, `--sweep NAME` of `ls` and `report`",
    "description": "free text; not part of any run id (a built-in example's is what `trainlab "
                   "examples` lists)",
    "data": "the dataset: `data.name` and its options (above)",
    "model": "the model: `model.name` and its options (above)",
    "optimizer": "the optimizer: `optimizer.name` and its options (above)",
    "schedule": "the LR schedule: `schedule.name` and its options (above)",
    "finetune": "which parameters train, at which LRs: `finetune.name` and its options (above)",
    "train": "the training loop's options (the `train` table above)",
    "grid": "dotted key -> list of values: the cartesian product of the lists, one run per "
            "point",
    "runs": "explicit extra runs, each a mapping of dotted keys merged onto the base",
    "cross": "true: every explicit run at every grid point (grid x runs)",
    "seeds": "repeat every run once per seed (sets `train.seed`)",
    "lr_find": "the LR range test's options (the `lr_find` table above)",
    "search": "an Optuna search over a space instead of (or per point of) a grid (below)",
}

SEARCH_FIELDS: dict[str, str] = {
    "method": "the sampler",
    "trials": "trials per study (one study per grid point)",
    "metric": "what a trial is judged by",
    "direction": "`minimize` or `maximize`",
    "space": "dotted key -> one of the forms below",
    "prune": "`{method: M, min_epochs: N}`: stop poor trials early (stored as `pruned`), "
             "never before N validations; M is one of",
    "seed": "the sampler's seed",
}
SEARCH_DEFAULTS: dict[str, str] = {
    "method": "`tpe`", "trials": "`20`", "metric": "`train.monitor` (else `valid/loss`)",
    "direction": "from the metric (loss, perplexity, rmse: minimize)", "space": "",
    "prune": "`none`", "seed": "`train.seed`",
}


def _type(annotation: object) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    text = text.replace("typing.", "").replace("dict[str, Any]", "dict")
    return text.replace("NoneType", "null").replace(" | None", " | null")


def search_markdown() -> str:
    """The sweep file's top-level fields, and the ``search:`` section's."""
    from pydantic_core import PydanticUndefined

    from trainlab.config.schema import SweepConfig
    from trainlab.search import spec

    missing = [f for f in SweepConfig.model_fields if f not in SWEEP_FIELDS]
    missing += [f"search.{f}" for f in spec._FIELDS if f not in SEARCH_FIELDS]
    if missing:
        raise SystemExit(f"docs/gen_reference.py: describe {missing}")
    lines = ["**The sweep file's top level**", "",
             "| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in SweepConfig.model_fields.items():
        if info.default_factory is not None:
            default = "`{}`" if name != "runs" else "`[]`"
            if name in ("optimizer", "schedule", "finetune"):
                made = info.default_factory()  # type: ignore[call-arg]
                default = "`{" + ", ".join(f"{k}: {v}" for k, v in made.items()) + "}`"
        elif info.default is PydanticUndefined:
            default = "required"
        else:
            value = info.default
            shown = str(value).lower() if isinstance(value, bool) else repr(value)
            default = f"`{shown}`" if value not in (None, "") else ""
        lines.append(f"| `{name}` | {_cell(_type(info.annotation))} | {_cell(default)} | "
                     f"{_cell(SWEEP_FIELDS[name])} |")
    lines += ["", "**`search`** — see [search](../guides/search.md); needs `trainlab[search]`.",
              "", "| field | default | meaning |", "|---|---|---|"]
    valid = {"method": spec.METHODS, "prune": spec.PRUNERS, "metric": spec.METRICS}
    for name in spec._FIELDS:
        meaning = SEARCH_FIELDS[name]
        if name in valid:
            sep = " " if meaning.endswith(" of") else ": "
            meaning += sep + ", ".join(f"`{v}`" for v in valid[name])
        lines.append(f"| `{name}` | {_cell(SEARCH_DEFAULTS.get(name, ''))} | {_cell(meaning)} |")
    forms = re.sub(r"(\{[^{}]*(?:\[[^\]]*\])?[^{}]*\})", r"`\1`", spec.FORMS)
    lines += ["", f"Space forms: {forms}.", ""]
    return "\n".join(lines)


BLOCKS = {"store": ("store.md", store_markdown), "search": ("config.md", search_markdown)}


def generated_block(text: str, name: str) -> str | None:
    """What a page holds between a block's markers, or None without them."""
    start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
    if start not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0]


def update() -> None:
    for name, (page, make) in BLOCKS.items():
        path = REFERENCE / page
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        text = path.read_text()
        head, rest = text.split(start, 1)
        path.write_text(head + start + make() + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        update()
    else:
        for _name, (_page, make) in BLOCKS.items():
            print(make())
