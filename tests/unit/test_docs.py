"""The documentation: README.md and the MkDocs site under docs/ (nav in mkdocs.yml).

The generated pages (config and command reference) stay equal to the code; every page in the
nav exists, every page is in the nav, and every relative link (and its #anchor) resolves.
The strict site build runs where mkdocs-material is installed (the `docs` extra; CI has it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainlab.cli.reference import BLOCKS, commands_markdown, generated_blocks
from trainlab.components import REGISTRIES
from trainlab.docs import markdown

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "reference" / "config.md"
COMMANDS_PAGE = DOCS / "reference" / "commands.md"
METRICS_PAGE = DOCS / "reference" / "metrics.md"


def _nav_pages() -> list[str]:
    # mkdocs.yml may hold python tags in other projects; this one is plain YAML.
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    pages: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, str):
            pages.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)

    walk(nav)
    return pages


def test_config_reference_matches_the_code() -> None:
    blocks = generated_blocks(CONFIG_PAGE.read_text())
    assert blocks.get("reference") == markdown(), (
        "regenerate: python -m trainlab.cli.reference --update docs/reference/config.md")


def test_command_reference_matches_the_code() -> None:
    blocks = generated_blocks(COMMANDS_PAGE.read_text())
    assert blocks.get("commands") == commands_markdown(), (
        "regenerate: python -m trainlab.cli.reference --update docs/reference/commands.md")


def test_every_command_is_documented() -> None:
    from trainlab.cli import app

    text = COMMANDS_PAGE.read_text()
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
        assert f"### `trainlab {name}`" in text, name


def test_every_component_is_documented() -> None:
    text = markdown()
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            assert f"`{kind}.name: {name}`" in text


def test_generated_blocks_live_only_in_the_reference_pages() -> None:
    # The README once embedded the config reference; it now links to the site's page.
    assert generated_blocks(README.read_text()) == {}
    assert set(BLOCKS) == {"reference", "commands"}


def test_every_recorded_metric_key_is_documented() -> None:
    """Every literal metric key in the source (``"time/data_wait"``...) is on the metrics page."""
    pattern = re.compile(r"[\"'`]((?:time|throughput|memory|perf|machine|gpu|params|eval)"
                         r"/[a-z_0-9]+)[\"'`]")
    keys = {m.group(1) for path in (ROOT / "src" / "trainlab").rglob("*.py")
            for m in pattern.finditer(path.read_text())}
    assert len(keys) > 20, keys
    page = METRICS_PAGE.read_text()
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, f"add to docs/reference/metrics.md: {missing}"


def test_readme_is_short_and_keeps_its_test_command() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert "\npython -m pytest\n" in text  # .ci/run runs "the README's test command"
    assert "\npython -m pytest\n" in (ROOT / ".ci" / "run").read_text()


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    pages = _nav_pages()
    assert len(pages) == len(set(pages))
    for page in pages:
        assert (DOCS / page).is_file(), f"mkdocs.yml nav names a missing page: docs/{page}"
    on_disk = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert on_disk == set(pages), f"pages not in the nav: {sorted(on_disk - set(pages))}"


_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(path: Path) -> set[str]:
    """The ids MkDocs gives a page's headings (toc's slugify), plus explicit {#id}s."""
    ids = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6} (.*)$", line)
        if not m:
            continue
        title = m.group(1).strip()
        explicit = re.search(r"\{#([\w-]+)\}\s*$", title)
        if explicit:
            ids.add(explicit.group(1))
            continue
        title = re.sub(r"[`*]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)).lower()
        title = re.sub(r"[^\w\s-]", "", title).strip()
        ids.add(re.sub(r"[-\s]+", "-", title))
    return ids


@pytest.mark.parametrize("page", [README, *sorted(DOCS.rglob("*.md"))],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    text = _FENCE.sub("", page.read_text())
    for target in _LINK.findall(text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        assert dest.exists(), f"{page.name}: link to a missing file: {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def test_site_builds_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs-material is not installed: "
                        "pip install -e '.[docs]' to build the documentation site")
    pytest.importorskip("material", reason="mkdocs-material is not installed: "
                        "pip install -e '.[docs]' to build the documentation site")
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
