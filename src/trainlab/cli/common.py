"""What every command shares: the typer app, the consoles, common options, and the guard
that turns bad input into a message and exit code 2.

Each command module registers its commands on :data:`app`; :mod:`trainlab.cli` imports them
all.  Modules here import torch, the engine and the store inside their commands only, so that
`trainlab --help`, `ls` and `show` start fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import typer
from rich.console import Console

from trainlab import __version__
from trainlab.analysis.fmt import format_mib, is_finite
from trainlab.errors import ConfigError

if TYPE_CHECKING:
    from trainlab.config.schema import RunConfig
    from trainlab.plan import PlannedRun
    from trainlab.store import Store

app = typer.Typer(
    name="trainlab",
    help="Run, measure and compare deep-learning training experiments from one YAML file.\n\n"
         "Start with `trainlab run --example quickstart`, then `trainlab ls`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
# Tables piped to a file or CI log get room to breathe (rich assumes 80 columns there).
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 140
out = Console(width=_WIDTH)
err = Console(stderr=True, width=_WIDTH)

T = TypeVar("T")

StoreOpt = typer.Option(None, "--store", envvar="TRAINLAB_STORE", metavar="DIR",
                        help="Store directory (default: ./trainlab-runs, or $TRAINLAB_STORE).")
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override a config field for every run, e.g. --set train.epochs=2 "
                           "(repeatable; grid.KEY=[..] edits a grid axis).")
JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
FitOpt = typer.Option(
    None, "--fit-memory", metavar="BYTES|auto",
    help="Refuse runs whose predicted peak memory exceeds this (8e9, 16GiB, auto = the "
         "device's memory) and suggest the largest batch size that fits.")
ExampleOpt = typer.Option(
    None, "--example", "-e", metavar="NAME",
    help="Use a built-in example instead of CONFIG (see `trainlab examples`).")


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def guard(fn: Callable[[], T]) -> T:
    """Run ``fn``; bad input becomes a message and exit code 2, never a traceback."""
    try:
        return fn()
    except ConfigError as exc:
        fail(escape(str(exc)))


# The databases this command opened: a page found damaged only when a query reads it (the
# open checks the header) is reported against them by the entry point.
OPENED_STORES: list[Path] = []


def command_store(ctx: typer.Context, path: Path | None, *, create: bool = True) -> Store:
    """The command's store (bad input: exit 2), closed when the command ends, however it ends
    (an explicit close: its SQLite connection is not left to the garbage collector).
    ``create``: a writing command, which refuses a read-only store; readers pass False."""
    from trainlab.store import open_store

    st = guard(lambda: open_store(path, create=create))
    ctx.call_on_close(st.close)
    OPENED_STORES.append(st.db_path)  # named if the database proves damaged later
    if create and st.read_only:  # a writing command: refuse before any work
        fail(escape(st.read_only_message()))
    return st


def escape(text: str) -> str:
    return text.replace("[", r"\[")


def _version(value: bool) -> None:
    if value:
        out.print(f"trainlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Show the version and exit.")) -> None:
    """Run, measure and compare deep-learning training experiments."""


def load_config(config: Path | None, example: str | None, overrides: list[str] | None) -> Any:
    from trainlab.config import load_sweep

    if config is not None and example is not None:
        raise ConfigError("give either CONFIG or --example, not both")
    return load_sweep(config, example=example, overrides=overrides or [])


def describe_run(planned: PlannedRun) -> str:
    from trainlab.config.keys import short_names

    labels = short_names(list(planned.varied))
    return " ".join(f"{labels[k]}={format_value(v)}" for k, v in planned.varied.items())


def headline(summary: Mapping[str, Any]) -> str:
    parts = []
    for key in ("test_accuracy", "test_perplexity", "test_rmse", "test_loss"):
        if key in summary and summary[key] is not None:
            parts.append(f"{key.replace('_', '/', 1)} {format_value(summary[key])}")
            break
    if summary.get("train_time") is not None:
        parts.append(f"{summary['train_time']:.1f}s")
    return "  ".join(parts)


def format_value(value: Any) -> str:
    if value is None:  # a varied key this run does not have (its component takes no such field)
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# Beside each result: what it cost (trainable share, throughput, the peak of the run's own
# tensors, the process's peak RSS on CPU or the CUDA allocator's reserved peak, gradient norm).
COST_COLUMNS = ("trainable %", "samples/s", "tensor MiB", "RSS/res MiB", "grad norm")


DISTURBED = "\u2020"  # the report's mark (analysis.tables.DISTURBED_SYMBOL) for one run


def timed(summary: Mapping[str, Any], text: str) -> str:
    """A time or throughput cell, marked where other work on the machine disturbed the run's
    timing (``timing_trusted`` false: engine/contention.py)."""
    return f"{text} {DISTURBED}" if text and summary.get("timing_trusted") is False else text


def train_seconds(summary: Mapping[str, Any]) -> str:
    value = summary.get("train_time")
    return timed(summary, f"{value:.1f}") if is_finite(value) else ""


def disturbed_note(summaries: Iterable[Mapping[str, Any]]) -> None:
    """Under a table of runs: what the mark means, where a run has it."""
    if any((s or {}).get("timing_trusted") is False for s in summaries):
        err.print(f"[yellow]{DISTURBED}[/]: other work on the machine disturbed this run's "
                  "timing (perf/disturbed): its times and throughput are not the model's alone; "
                  "rerun it on a quiet machine for numbers to compare.", highlight=False)


def cost_cells(summary: Mapping[str, Any]) -> list[str]:
    def get(key: str, spec: str) -> str:
        value = summary.get(key)
        return format(value, spec) if is_finite(value) else ""

    def mib(key: str) -> str:
        return format_mib(summary.get(key), missing="", grouping=False, significant=3)

    # A GPU run from before tensor_peak_bytes: its peak_memory_bytes is the allocator's peak,
    # the same measurement; an older CPU run has no tensors' number (blank).
    cuda = str(summary.get("device", "")).startswith("cuda")
    tensors = "tensor_peak_bytes" if "tensor_peak_bytes" in summary or not cuda else \
        "peak_memory_bytes"
    return [get("params_trainable_pct", ".3g"), timed(summary, get("samples_per_s", ".0f")),
            mib(tensors),
            mib("reserved_memory_bytes" if cuda else "peak_memory_bytes"),
            get("grad_norm_median", ".3g")]


def warn_if_busy(threads: Sequence[int | str], jobs: int | None = None) -> None:
    """Warn once, before training, when other processes hold the cores the runs will need
    (the rule: :func:`trainlab.engine.contention.busy_message`).  ``threads``: each run's
    ``train.threads`` (``auto`` counts as one: it drops to one thread on a busy machine);
    with ``--jobs`` that many runs train at once."""
    from trainlab.engine.contention import busy_message
    from trainlab.engine.machine import load_average, usable_cores

    cores = usable_cores()
    wanted = max((t if isinstance(t, int) else 1 for t in threads), default=1) * max(jobs or 1, 1)
    message = busy_message(load_average(), cores, wanted)
    if message:
        err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)


def eager(configs: Iterable[RunConfig]) -> AbstractContextManager[None]:
    """Training and estimating without importing ``torch._dynamo`` unless something uses it
    (:func:`~trainlab.components.optimizers.no_dynamo_import`: 0.8-3 s a process, a fifth of
    a small run), when none of ``configs`` compiles (``train.compile``)."""
    configs = list(configs)
    if not configs or any(c.train.compile for c in configs):  # none: no torch needed at all
        return nullcontext()
    from trainlab.components.optimizers import no_dynamo_import

    return no_dynamo_import()
