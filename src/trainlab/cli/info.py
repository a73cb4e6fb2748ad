"""`trainlab examples` and `trainlab components`: what is built in, and every option."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from trainlab.cli.common import JsonOpt, app, err, escape, fail, guard, out


@app.command()
def examples(
    name: str | None = typer.Argument(None, help="Print this example's YAML."),
    copy: Path | None = typer.Option(
        None, "--copy", metavar="DIR", show_default=False,
        help="Write the example's YAML and its code files into DIR, to edit and run from there "
             "(trainlab run DIR/NAME.yaml)."),
    as_json: bool = JsonOpt,
) -> None:
    """List the built-in examples (offline ones, and the five studies at their real size),
    print one's YAML, or copy one to edit."""
    from trainlab.config import example_names, example_text
    from trainlab.config.load import example_files, parse_yaml

    if copy is not None and name is None:
        fail("`--copy` needs the example's NAME: trainlab examples NAME --copy DIR")
    if name is not None and copy is not None:
        files = guard(lambda: example_files(name))
        existing = [rel for rel in files if (copy / rel).exists()]
        if existing:
            fail(f"`--copy`: {copy} already has {', '.join(existing)}; nothing was written "
                 "(choose an empty folder)")
        for rel, text in files.items():
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            (copy / rel).write_text(text)
        out.print(f"wrote {', '.join(files)} to {copy}; run it with: trainlab run "
                  f"{copy / f'{name}.yaml'}", highlight=False)
        return
    if name is not None:
        text = guard(lambda: example_text(name))
        sys.stdout.write(text)
        return
    from trainlab.examples import STUDIES

    rows: list[dict[str, object]] = []
    for n in example_names():
        doc = parse_yaml(example_text(n), n)
        row: dict[str, object] = {"name": n, "kind": "study" if n in STUDIES else "offline",
                                  "description": str(doc.get("description", "")).strip()}
        if n in STUDIES:
            s = STUDIES[n]
            row.update(study=s.study, needs=s.needs, gpu_hours=s.gpu_hours,
                       commands=list(s.commands), offline=s.offline)
        rows.append(row)
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(title="built-in examples, offline: trainlab run --example NAME",
                  title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for r in rows:  # escaped: "needs trainlab[hf]" is text, not rich markup
        if r["kind"] == "offline":
            table.add_row(escape(str(r["name"])), escape(str(r["description"])))
    out.print(table)
    studies = Table(title="the studies at their real size (hub data and models; network, GPU): "
                    "trainlab examples NAME prints one", title_justify="left")
    for column in ("name", "study", "needs", "GPU hours", "run with"):
        studies.add_column(column)
    for r in rows:
        if r["kind"] == "study":
            studies.add_row(*(escape(str(r[k])) for k in ("name", "study", "needs", "gpu_hours")),
                            escape("\n".join(r["commands"])))  # type: ignore[arg-type]
    out.print(studies)


@app.command()
def components(
    kind: str | None = typer.Argument(
        None, help="data, model, optimizer, schedule, finetune, train or lr_find (default: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """List the registered components and every option each takes, with defaults."""
    from trainlab.docs import KINDS, describe

    if kind is not None and kind not in KINDS:
        fail(f"`KIND`: unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    entries = describe([kind] if kind else list(KINDS))
    from trainlab.components import PLUGIN_WARNINGS

    for warning in PLUGIN_WARNINGS:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if as_json:
        out.print_json(data=entries)
        return
    for entry in entries:
        origin = entry.get("origin", "trainlab")
        source = "" if origin == "trainlab" else f"  [dim](from {origin})[/]"
        out.print(f"[bold]{entry['kind']}.name: {entry['name']}[/]{source}  {entry['doc']}",
                  highlight=False)
        for f in entry["fields"]:
            desc = f"  {f['description']}" if f["description"] else ""
            out.print(f"    {f['name']}: {f['type']} = {f['default']}{desc}", highlight=False,
                      markup=False)
