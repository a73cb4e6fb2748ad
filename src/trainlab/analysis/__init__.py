"""Analysis: read the store, shape tidy frames, and turn them into tables, figures and answers.

Only reads the store; nothing flows back into the engine.  Heavy imports (pandas, matplotlib)
happen in the submodules, which the CLI imports inside its commands.

    from trainlab.analysis import ReportOptions, build_report, write_report
    report = build_report(open_store("trainlab-runs", create=False), ReportOptions())
    write_report(report, Path("reports/quickstart"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "ReportOptions": "trainlab.analysis.report", "Report": "trainlab.analysis.report",
    "build_report": "trainlab.analysis.report", "write_report": "trainlab.analysis.report",
    "load_sweep": "trainlab.analysis.frames", "SweepFrames": "trainlab.analysis.frames",
    "compare_runs": "trainlab.analysis.compare",
}

if TYPE_CHECKING:
    from trainlab.analysis.compare import compare_runs
    from trainlab.analysis.frames import SweepFrames, load_sweep
    from trainlab.analysis.report import Report, ReportOptions, build_report, write_report


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainlab.analysis' has no attribute {name!r}")


__all__ = ["Report", "ReportOptions", "SweepFrames", "build_report", "compare_runs",
           "load_sweep", "write_report"]
