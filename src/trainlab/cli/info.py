"""`trainlab examples` and `trainlab components`: what is built in, and every option."""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from trainlab.cli.common import JsonOpt, app, fail, guard, out


@app.command()
def examples(
    name: str | None = typer.Argument(None, help="Print this example's YAML."),
    as_json: bool = JsonOpt,
) -> None:
    """List the built-in examples (all run offline), or print one's YAML."""
    from trainlab.config import example_names, example_text
    from trainlab.config.load import parse_yaml

    if name is not None:
        text = guard(lambda: example_text(name))
        sys.stdout.write(text)
        return
    rows = []
    for n in example_names():
        doc = parse_yaml(example_text(n), n)
        rows.append({"name": n, "description": str(doc.get("description", "")).strip()})
    if as_json:
        out.print_json(data=rows)
        return
    table = Table(title="built-in examples: trainlab run --example NAME", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for r in rows:
        table.add_row(r["name"], r["description"])
    out.print(table)


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
    if as_json:
        out.print_json(data=entries)
        return
    for entry in entries:
        out.print(f"[bold]{entry['kind']}.name: {entry['name']}[/]  {entry['doc']}",
                  highlight=False)
        for f in entry["fields"]:
            desc = f"  {f['description']}" if f["description"] else ""
            out.print(f"    {f['name']}: {f['type']} = {f['default']}{desc}", highlight=False,
                      markup=False)
