"""The report's "Where the time goes": shown only when a run was profiled (train.profile),
with a stacked bar of phase shares, the top operators and links to the traces."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainlab.analysis.profiles import PHASES as REPORT_PHASES
from trainlab.analysis.report import ReportOptions, build_report, write_report
from trainlab.engine.profile import PHASES as ENGINE_PHASES
from trainlab.store import Store

RUNS = [
    {"values": {"optimizer.name": "adam"}, "train": [300, 150], "valid": [260, 160],
     "time": [3, 6], "memory": 300},
    {"values": {"optimizer.name": "sgd"}, "train": [900, 700], "valid": [880, 690],
     "time": [2, 4], "memory": 280},
]
SHARES = {"data_wait": 0.05, "forward": 0.3, "backward": 0.45, "optimizer": 0.15, "other": 0.05}


def _profile(cuda: bool = False) -> dict[str, Any]:
    ops = [{"name": f"aten::op{i}", "self_cpu_s": 0.001 * (12 - i), "cpu_s": 0.002,
            "calls": 10 + i, **({"self_cuda_s": 0.0005} if cuda else {})} for i in range(12)]
    return {"steps": 5, "warmup": 2, "epoch": 1, "seconds": 0.1, "step_s": 0.02,
            "phases": {k: 0.1 * v for k, v in SHARES.items()}, "shares": SHARES,
            "top_ops": ops, "trace": "profile/trace.pt.trace.json", "last_step": 10,
            "device": "cpu"}


def _profile_run(store: Store, index: int, profile: dict[str, Any]) -> Path:
    runs = store.runs("two")
    row = runs[runs["index"] == index].iloc[0]
    store.finish_run(row["run_id"], "ok", None, {**row["summary"], "profile": profile})
    trace = store.run_dir(row["run_id"]) / profile["trace"]
    trace.parent.mkdir(parents=True)
    trace.write_text(json.dumps({"traceEvents": []}))
    return trace


def test_the_phases_agree_with_the_engine() -> None:
    assert REPORT_PHASES == ENGINE_PHASES


def test_no_section_without_a_profiled_run(make_store: Callable[..., Store],
                                           tmp_path: Path) -> None:
    report = build_report(make_store("two", ["optimizer.name"], RUNS),
                          ReportOptions(formats=("png",)))
    try:
        assert "profile" not in [s.id for s in report.sections]
        assert report.table("profile-ops") is None
    finally:
        report.close()


def test_the_section_shows_shares_operators_and_trace_links(
        make_store: Callable[..., Store], tmp_path: Path) -> None:
    store = make_store("two", ["optimizer.name"], RUNS)
    trace = _profile_run(store, 2, _profile())
    report = build_report(store, ReportOptions(formats=("png",)))
    try:
        ids = [s.id for s in report.sections]
        assert ids.index("profile") < ids.index("profile-ops") < ids.index("system")
        section = report.sections[ids.index("profile")]
        fig = section.figures[0].figure
        ax = fig.axes[0]
        widths = [round(p.get_width(), 6) for p in ax.patches]
        assert widths == [round(100 * SHARES[p], 6) for p in REPORT_PHASES]  # one bar: run 2
        assert [t.get_text() for t in ax.get_yticklabels()] == ["run 2 (optimizer=sgd)"]
        ops = report.table("profile-ops")
        assert ops is not None and len(ops.rows) == 10  # the top 10 of the run's 12
        assert ops.rows[0]["operator"] == "aten::op0" and ops.rows[0]["index"] == 2
        assert ops.rows[0]["self_cpu_ms"] == pytest.approx(12.0)
        assert ops.rows[0]["share"] == pytest.approx(12.0)  # % of the steps' 0.1 s
        assert "self_cuda_ms" not in {c.key for c in ops.columns}  # a CPU run: no CUDA column
        out = tmp_path / "report"
        write_report(report, out)
    finally:
        report.close()
    page = (out / "report.html").read_text()
    assert '<h2>Where the time goes</h2>' in page and "Top operators" in page
    links = re.findall(r'<a href="([^"]+\.pt\.trace\.json)"', page)
    assert len(links) == 1 and (out / links[0]).resolve() == trace.resolve()
    md = (out / "report.md").read_text()
    assert "## Where the time goes" in md and f"]({links[0]})" in md
    assert (out / "figures" / "profile-phases.png").is_file()
    assert (out / "tables" / "profile-ops.csv").is_file()


def test_cuda_operators_get_their_column(make_store: Callable[..., Store]) -> None:
    store = make_store("two", ["optimizer.name"], RUNS)
    _profile_run(store, 1, _profile(cuda=True))
    report = build_report(store, ReportOptions(formats=("png",)))
    try:
        ops = report.table("profile-ops")
        assert ops is not None and "self_cuda_ms" in {c.key for c in ops.columns}
        assert ops.rows[0]["self_cuda_ms"] == 0.5
    finally:
        report.close()
