"""The documentation: README.md and the MkDocs site under docs/ (nav in mkdocs.yml).

The generated pages stay equal to the code: the config and command reference
(``trainlab.cli.reference``), the store's schema and the sweep's own and ``search:`` fields
(``docs/gen_reference.py``); every metric key and summary key the code records is on the
metrics page. Every page in the nav exists and every page is in the nav; every relative link
(and its #anchor) and image of the Markdown resolves, and so does every internal link, image
and #anchor of the built site. The strict site build runs where mkdocs-material is installed
(the `docs` extra; CI has it).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

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


def _gen_reference() -> Any:
    """docs/gen_reference.py: the store's schema and the sweep's fields, generated."""
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("block", ["store", "search"])
def test_store_and_sweep_reference_match_the_code(block: str) -> None:
    """Every table, column and run status of a new store (store.md), and every top-level sweep
    field and search field (config.md), are on their pages, as generated."""
    gen = _gen_reference()
    page, make = gen.BLOCKS[block]
    text = (DOCS / "reference" / page).read_text()
    assert gen.generated_block(text, block) == make(), (
        "regenerate: python -m docs.gen_reference --update")


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


def _summary_keys() -> set[str]:
    """The literal keys the engine, the stacked trainer, ``lr: auto`` and the search pruner
    write into a run's summary (``out["key"] =``, ``out.update(key=...)``, ``out = {"key": ..}``,
    ``summary = {**..., "key": ...}``, ``final_summary = {...}``), read from their source."""
    import ast

    src = ROOT / "src" / "trainlab"
    keys: set[str] = set()
    for path in (src / "engine" / "loop.py", src / "engine" / "stack.py",
                 src / "lr" / "study.py", src / "search" / "prune.py",
                 src / "execute" / "local.py", src / "execute" / "stacked.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for node in ast.walk(fn):
                targets = (node.targets if isinstance(node, ast.Assign) else
                           [node.target] if isinstance(node, ast.AnnAssign) else [])
                value = getattr(node, "value", None)
                for t in targets:
                    named = (isinstance(t, ast.Name) and t.id in ("out", "summary")) or (
                        isinstance(t, ast.Attribute) and t.attr == "final_summary")
                    if named and isinstance(value, ast.Dict):
                        keys |= {k.value for k in value.keys
                                 if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                    if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name)
                            and t.value.id == "out"):
                        keys |= {c.value for c in ast.walk(t.slice)
                                 if isinstance(c, ast.Constant) and isinstance(c.value, str)}
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "update" and isinstance(node.func.value, ast.Name)
                        and node.func.value.id == "out"):
                    keys |= {k.arg for k in node.keywords if k.arg}
    return keys


def test_every_summary_key_is_documented() -> None:
    """Every key a run's summary gets from the code is in the metrics page's summary table."""
    keys = _summary_keys()
    assert {"train_time", "samples_per_s", "stacked", "pruned_epoch", "lr_chosen"} <= keys, keys
    page = METRICS_PAGE.read_text().split("## Run summary", 1)[-1]
    missing = sorted(k for k in keys if f"`{k}`" not in page)
    assert not missing, f"add to the summary table of docs/reference/metrics.md: {missing}"


def test_readme_is_short_and_keeps_its_test_command() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 200
    assert len(_IMAGE.findall(text)) == 1  # one picture of a report
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
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
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
    for image in _IMAGE.findall(text):  # the README's picture of a report, the figures
        if not re.match(r"^[a-z]+:", image):
            assert (page.parent / image).is_file(), f"{page.name}: missing image {image}"


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``mkdocs build --strict`` (once for this module)."""
    pytest.importorskip("mkdocs", reason="mkdocs-material is not installed: "
                        "pip install -e '.[docs]' to build the documentation site")
    pytest.importorskip("material", reason="mkdocs-material is not installed: "
                        "pip install -e '.[docs]' to build the documentation site")
    site = tmp_path_factory.mktemp("docs") / "site"
    mkdocs = shutil.which("mkdocs") or str(Path(sys.executable).with_name("mkdocs"))
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return site


def test_site_builds_strict(built_site: Path) -> None:
    assert (built_site / "reference" / "config" / "index.html").is_file()
    for page in ("reference/store", "reference/metrics", "tutorials/wikitext-lm",
                 "explanation/architecture", "benchmarks/results"):
        assert (built_site / page / "index.html").is_file(), page


class _Page(HTMLParser):
    """A built page's ids and the local targets of its links and images."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.targets: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("id", "name") and value:
                self.ids.add(value)
            elif value and ((name == "href" and tag in ("a", "link"))
                            or (name == "src" and tag in ("img", "script"))):
                self.targets.append(value)


def test_built_site_links_and_anchors_resolve(built_site: Path) -> None:
    """Every internal link, image and script of every built page resolves to a file of the
    site, and every #anchor to an id on its page: what a reader clicks works, whatever the
    Markdown source looked like (links written by templates and generators included)."""
    pages: dict[Path, _Page] = {}
    for html in built_site.rglob("*.html"):
        parsed = _Page()
        parsed.feed(html.read_text(encoding="utf-8"))
        pages[html.resolve()] = parsed
    assert len(pages) > 20
    broken = []
    for html, parsed in pages.items():
        for target in parsed.targets:
            if re.match(r"^([a-z][a-z0-9+.-]*:|//)", target):
                continue  # http(s), mailto, data: ... are not the site's
            path_part, _, anchor = target.partition("#")
            path_part = unquote(path_part.split("?", 1)[0])
            if path_part.startswith("/"):  # 404.html links from the site's root
                dest = (built_site / path_part.lstrip("/")).resolve()
            else:
                dest = (html.parent / path_part).resolve() if path_part else html
            if dest.is_dir():
                dest = dest / "index.html"
            where = html.relative_to(built_site.resolve()).as_posix()
            if not dest.is_file():
                broken.append(f"{where}: {target} (no such file)")
            elif anchor and dest.suffix == ".html" and unquote(anchor) not in pages[dest].ids:
                broken.append(f"{where}: {target} (no such anchor)")
    assert not broken, "broken links in the built site:\n" + "\n".join(sorted(set(broken))[:40])
