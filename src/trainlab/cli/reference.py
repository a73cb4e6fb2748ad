"""The documentation's generated blocks: the config reference (:func:`trainlab.docs.markdown`)
and every command with its arguments and options, read from the typer app.

``python -m trainlab.cli.reference --update docs/reference/config.md docs/reference/commands.md``
rewrites the generated blocks of Markdown files (``<!-- reference:start -->`` ...
``<!-- reference:end -->`` for the config, ``<!-- commands:start -->`` ...
``<!-- commands:end -->`` for the commands); a test keeps the site's pages equal to the code.
It lives in the cli package because it reads the app: :mod:`trainlab.docs` stays below it.
"""

from __future__ import annotations

from typing import Any

from trainlab.docs import _cell, markdown


def _default(param: Any) -> str:
    if getattr(param, "is_flag", False) and not param.secondary_opts:
        return ""
    default = param.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, (list, tuple)):
        return ", ".join(f"`{d}`" for d in default)
    return f"`{default}`"


def commands_markdown() -> str:
    """Every command of ``trainlab`` and its arguments and options, as Markdown, read from the
    typer app (the same text as each command's ``--help``)."""
    import typer.main

    from trainlab.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("trainlab", [], resilient_parsing=True)
    lines: list[str] = []
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        if command is None or command.hidden:
            continue
        lines += [f"### `trainlab {name}`", "", (command.help or "").strip(), ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if not params:
            continue
        lines += ["| argument / option | default | meaning |", "|---|---|---|"]
        for p in params:
            if p.param_type_name == "argument":
                label = f"`{(p.metavar or p.name or '').upper()}`"
            else:
                opts = " / ".join(list(p.opts) + list(p.secondary_opts))
                metavar = "" if getattr(p, "is_flag", False) else f" {p.metavar or 'VALUE'}"
                label = f"`{opts}{metavar}`" + (" (repeatable)" if p.multiple else "")
            help_text = " ".join((getattr(p, "help", None) or "").split())
            if getattr(p, "envvar", None):
                help_text += f" (env: `{p.envvar}`)"
            lines.append(f"| {_cell(label)} | {_cell(_default(p))} | {_cell(help_text)} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


BLOCKS: dict[str, Any] = {"reference": markdown, "commands": commands_markdown}


def generated_blocks(text: str) -> dict[str, str]:
    """The generated blocks a Markdown text holds, by name (what is between the markers)."""
    found = {}
    for name in BLOCKS:
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        if start in text:
            found[name] = text.split(start, 1)[1].split(end, 1)[0]
    return found


def update(path: str) -> None:
    """Rewrite every generated block of a Markdown file with the current code's."""
    from pathlib import Path

    text = Path(path).read_text()
    for name in generated_blocks(text):
        start, end = f"<!-- {name}:start -->\n", f"<!-- {name}:end -->"
        head, rest = text.split(start, 1)
        text = head + start + BLOCKS[name]() + end + rest.split(end, 1)[1]
    Path(path).write_text(text)


if __name__ == "__main__":
    import sys

    if len(sys.argv) >= 3 and sys.argv[1] == "--update":
        for target in sys.argv[2:]:
            update(target)
    else:
        print(commands_markdown(), end="")
