from __future__ import annotations

from pathlib import Path

from trainlab.components import REGISTRIES
from trainlab.docs import markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_reference_matches_the_code() -> None:
    text = README.read_text()
    start = text.index("<!-- reference:start -->\n") + len("<!-- reference:start -->\n")
    end = text.index("<!-- reference:end -->")
    assert text[start:end] == markdown(), "regenerate: python -m trainlab.docs --update README.md"


def test_every_component_is_documented() -> None:
    text = markdown()
    for kind, registry in REGISTRIES.items():
        for name in registry.names():
            assert f"`{kind}.name: {name}`" in text
