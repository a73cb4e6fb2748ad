"""Generate the tutorial pages (docs/tutorials/<study>.md and docs/tutorials/<study>/) from real
runs of the shipped studies on their offline stand-ins.

    python -m docs.gen_tutorials                 # every study (a few minutes on 2 cores)
    python -m docs.gen_tutorials wikitext-lm     # one

For each study it builds the local stand-ins in the hub's formats (tests/standins.py), rewrites
the shipped config to use them at a small size, runs the commands a user runs (``trainlab run``,
or ``lr-find --emit-grid`` then ``run``; then ``trainlab report``) into a temporary store, and
writes the page: the study, its shipped config (included from src/trainlab/examples/, so it
never drifts), the commands at full size, and what the stand-in run produced (the summary table,
the answers and two figures, copied from the report) with the date, the machine and the exact
commands.  Nothing on the page is measured by hand; rerun this after changing a study or the
report.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "tutorials"


@dataclass(frozen=True)
class Page:
    name: str
    title: str
    intro: str
    figures: tuple[str, ...]   # preferred figure file names (prefixes), in order; two are kept
    sections: tuple[str, ...] = ()  # report sections shown besides the summary and answers
    report_args: tuple[str, ...] = ()  # as the study's own `trainlab report` line has them


PAGES = {p.name: p for p in (
    Page("glue-finetune", "BERT fine-tuning schemes on SST-2 and CoLA",
         "A course project (COMS 6998) fine-tuned bert-base-uncased on GLUE's SST-2 and CoLA "
         "under ULMFiT-style schemes: a fixed LR, Nesterov momentum, differential "
         "(discriminative) LRs and gradual unfreezing, each with and without adapters, and a "
         "triangular schedule, and tabulated validation loss and accuracy per scheme. Here it is "
         "one sweep file: a grid over the two tasks crossed (`cross: true`) with the ten "
         "schemes as explicit runs.",
         ("accuracy-epoch", "loss-epoch")),
    Page("wikitext-lm", "LSTM vs GPT-1 language models on WikiText-2",
         "A homework study ran 12 experiments: an LSTM and a GPT-1-style decoder on WikiText-2 "
         "under Adam, AdamW, SGD and momentum, then 2 and 4 layers, and plotted perplexity over "
         "epochs and over wall-clock time, with a table of the best epoch of each run (bold: "
         "the best per architecture) and answers on wall-clock time and generalization.",
         ("perplexity-epoch", "perplexity-time")),
    Page("mlp-labs", "MLPs on Fashion-MNIST and CIFAR-10, estimated and measured",
         "A lab report trained one-hidden-layer MLPs on Fashion-MNIST and CIFAR-10 across "
         "width, batch size, epochs and L2 regularization, counted parameters, and set "
         "estimated GPU memory and training time against the measured ones. `trainlab "
         "estimate` predicts both before training; the report sets them side by side.",
         ("accuracy-epoch", "pareto_time"), ("Predicted and measured",), ("--sort", "run")),
    Page("mnist-lr-range", "An LR range test, then fixed vs StepLR",
         "A study ran an LR range test for SGD and for Adam on LeNet-5, read four candidate "
         "LRs off the curve, trained each with a fixed LR and with StepLR, and chose the best "
         "LR per optimizer and schedule. `trainlab lr-find --emit-grid` does the first half and "
         "writes the second as a sweep file.",
         ("lr-range", "accuracy-epoch")),
    Page("agnews-peft", "GPT-2 on AG News: LoRA, adapters and prompt tuning",
         "A project fine-tuned GPT-2 on AG News with LoRA, adapter tuning and prompt tuning "
         "under PyTorch DDP, logged to Weights & Biases, and compared accuracy, runtime, "
         "memory, gradient norm, throughput and loss.",
         ("accuracy-epoch", "pareto_memory")),
)}


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {len(os.sched_getaffinity(0))} usable cores, {platform.system()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}; "
            f"1-minute load average {load:.1f} when the runs started")


def _trainlab(args: list[str], log: list[str], shown: list[str], env: dict[str, str]) -> None:
    """Run one trainlab command as a user does (a subprocess); keep its line for the page."""
    shown.append("trainlab " + " ".join(shlex.quote(a) for a in args))
    done = subprocess.run([sys.executable, "-m", "trainlab", *args], capture_output=True,
                          text=True, env=env, cwd=env.get("PWD"))
    log.append(done.stdout + done.stderr)
    if done.returncode != 0:
        errors = ""
        if "--store" in args and (Path(args[args.index("--store") + 1]) / "trainlab.db").exists():
            from trainlab.store import open_store

            runs = open_store(args[args.index("--store") + 1]).runs()
            failed = runs[runs["status"] != "ok"]
            errors = "\n".join(str(e)[-2000:] for e in failed["error"].head(2))
        raise SystemExit(f"trainlab {' '.join(args)} exited {done.returncode}:\n"
                         f"{done.stdout[-2000:]}{done.stderr[-2000:]}\n{errors}")


def _section(markdown: str, heading: str) -> str:
    """A ``## heading`` section of the report's Markdown, its headings one level down and its
    images left out (the page shows its own two)."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    if match is None:
        return ""
    lines = [("#" + line if line.startswith("#") else line)
             for line in match.group(1).splitlines() if not line.startswith("![")]
    return "\n".join(lines).strip()


def _figures(report: Path, store: Path, prefixes: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Two (figure, caption) pairs: for each preferred prefix, the first such figure in the
    report's own order (the range tests' figures sit in the store's lr-ranges/)."""
    markdown = (report / "report.md").read_text()
    found = [(report / path, alt) for alt, path in
             re.findall(r"^!\[(.*?)\]\((figures/[^)]+\.png)\)", markdown, re.M)]
    found += [(png, f"LR range test {png.stem}") for png in
              sorted((store / "lr-ranges").glob("*.png"))]
    chosen: list[tuple[Path, str]] = []
    for prefix in prefixes:
        for png, alt in found:
            label = "lr-range" if png.parent.name == "lr-ranges" else png.name
            if label.startswith(prefix) and png.exists() and png not in [c[0] for c in chosen]:
                chosen.append((png, alt))
                break
    return chosen[:2]


def generate(name: str, work: Path, standin_dirs: dict[str, str]) -> Path:
    from tests import standins

    from trainlab.config.load import example_text
    from trainlab.examples import STUDIES

    page, study = PAGES[name], STUDIES[name]
    doc = yaml.safe_load(example_text(name))
    sizes = standins.SIZES[name]
    # Relative stand-in folders, the commands run from ``work``: the page's tables, captions
    # and commands name `standins/<name>`, not this machine's temporary folder.
    (work / "standins").symlink_to(Path(next(iter(standin_dirs.values()))).parent)
    local = standins.relocate(doc, {k: f"standins/{k}" for k in standin_dirs}, sizes)
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(local, sort_keys=False))
    store, report = work / "store", work / "report"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TOKENIZERS_PARALLELISM": "false",
           "PWD": str(work)}  # the commands run in `work` (see _trainlab)
    log: list[str] = []
    shown: list[str] = []
    started = dt.datetime.now(dt.timezone.utc)
    machine = _machine()
    sweep = name
    if name == "mnist-lr-range":
        followup = work / "followup.yaml"
        _trainlab(["lr-find", str(config), "--store", str(store), "--emit-grid", str(followup)],
                  log, shown, env)
        _trainlab(["run", str(followup), "--store", str(store), "-q"], log, shown, env)
        sweep = f"{name}-followup"
    else:
        extra = ["--nproc", "2", "--log", "wandb"] if name == "agnews-peft" else []
        _trainlab(["run", str(config), "--store", str(store), "-q", *extra], log, shown, env)
    _trainlab(["report", "--store", str(store), "--sweep", sweep, "--out", str(report),
               *page.report_args], log, shown, env)
    finished = dt.datetime.now(dt.timezone.utc)

    assets = OUT / name
    if assets.exists():
        shutil.rmtree(assets)
    assets.mkdir(parents=True)
    figures = []
    for png, caption in _figures(report, store, page.figures):
        target = assets / ("lr-range-" + png.name if png.parent.name == "lr-ranges" else png.name)
        shutil.copyfile(png, target)
        figures.append((target, caption))
    summary = (report / "tables" / "summary.md").read_text().strip()
    markdown = (report / "report.md").read_text()
    answers = _section(markdown, "Answers")

    def short(command: str) -> str:  # the temporary folder is not the reader's
        return command.replace(str(work) + "/", "")

    mapping = "\n".join(f"| `{hub}` | {standins.HUB_IDS[hub]} |" for hub in standins.HUB_IDS
                        if standins.HUB_IDS[hub] in standins.needed(doc))
    full = "\n".join(study.commands)
    lines = [
        "<!-- Generated by `python -m docs.gen_tutorials` from a real run; do not edit. -->",
        f"# Tutorial: {page.title}",
        "",
        page.intro,
        "",
        f"**Needs:** {study.needs}. **GPU-hours** (one A100/H100-class GPU): "
        f"{study.gpu_hours}. The offline counterpart on CPU is the `{study.offline}` example "
        f"([all examples](examples.md)).",
        "",
        "## The shipped config",
        "",
        f"`trainlab examples {name}` prints it, `trainlab examples {name} --copy DIR` copies it "
        "to edit.",
        "",
        "```yaml",
        f'--8<-- "src/trainlab/examples/{name}.yaml"',
        "```",
        "",
        "## Run it at full size",
        "",
        "```bash",
        full,
        "```",
        "",
        "## What it produces (on a small offline stand-in)",
        "",
        "!!! note \"These numbers come from a small stand-in, not from the study's data\"",
        "    The table, answers and figures below were generated by `python -m "
        "docs.gen_tutorials` from a real run of this config on tiny local copies of its data "
        "and models in the Hugging Face hub's formats (tests/standins.py: a few hundred "
        "examples, tiny random-weight BERT/GPT-2 with their own tokenizers), on a CPU. They "
        "show what the report holds, not what the study's models reach: run the config above "
        "for those.",
        "",
        f"Generated {started:%Y-%m-%d %H:%M} UTC (took {(finished - started).seconds} s) on "
        f"{machine}.",
        "",
        "The stand-in config is the shipped one with each hub id replaced by its local stand-in "
        "and these sizes set (as `--set` does): " + ", ".join(f"`{s}`" for s in sizes) + ".",
        "",
        "| hub id | stand-in |",
        "|---|---|",
        mapping,
        "",
        "Commands run (`" + name + ".yaml` is the stand-in config):",
        "",
        "```bash",
        *[short(c) for c in shown],
        "```",
        "",
        "### Summary table",
        "",
        summary,
        "",
    ]
    for figure, caption in figures:
        lines += [f"![{caption}]({name}/{figure.name})", "", f"*{caption}*", ""]
    for heading in page.sections:
        body = _section(markdown, heading)
        if body:
            lines += [f"### {heading}", "", body, ""]
    if answers:
        lines += ["### Answers", "", answers, ""]
    path = OUT / f"{name}.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def main(argv: list[str]) -> int:
    from tests import standins

    names = argv or list(PAGES)
    unknown = [n for n in names if n not in PAGES]
    if unknown:
        print(f"unknown study {unknown}; choose from {', '.join(PAGES)}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="trainlab-tutorials-") as tmp:
        root = Path(tmp)
        built = standins.build_standins(root / "standins")
        for name in names:
            work = root / name
            work.mkdir()
            print(f"{name}: {generate(name, work, built)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
