from __future__ import annotations

import pytest
from pydantic import BaseModel

from trainlab.components import REGISTRIES
from trainlab.errors import UnknownNameError
from trainlab.registry import Registry


class _Spec(BaseModel):
    name: str


def test_register_and_get() -> None:
    reg: Registry = Registry("widget")

    @reg.register("round", spec=_Spec)
    def build_round() -> str:
        """A round widget."""
        return "round"

    assert reg.get("round").build() == "round"
    assert reg.get("round").doc == "A round widget."
    assert "round" in reg and reg.names() == ["round"]


def test_duplicate_name_is_refused() -> None:
    reg: Registry = Registry("widget")
    reg.register("a", spec=_Spec)(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", spec=_Spec)(lambda: 2)


def test_unknown_name_lists_choices_and_closest() -> None:
    with pytest.raises(UnknownNameError) as info:
        REGISTRIES["model"].get("lstmm", field="model.name")
    message = str(info.value)
    assert "`model.name`" in message and "'lstmm'" in message
    assert "did you mean 'lstm'" in message
    for name in ("cnn", "gpt", "lstm", "mlp"):
        assert name in message


@pytest.mark.parametrize(("kind", "expected"), [
    ("data", {"digits", "pydoc-lm", "synthetic", "npz", "csv"}),
    ("model", {"mlp", "cnn", "lstm", "gpt"}),
    ("optimizer", {"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad"}),
    ("schedule", {"constant", "step", "multistep", "exponential", "cosine", "warmup-linear",
                  "onecycle", "cyclic", "slanted-triangular", "plateau"}),
    ("finetune", {"full"}),
])
def test_first_entries_are_registered(kind: str, expected: set[str]) -> None:
    assert expected <= set(REGISTRIES[kind].names())


def test_every_entry_of_a_component_registry_has_its_kinds_spec() -> None:
    # The typed RunConfig promises data.batch_size, optimizer.lr ...: the registries hold it.
    from trainlab.config.schema import RunConfig

    hints = RunConfig.__dataclass_fields__
    for section, registry in REGISTRIES.items():
        assert registry.base is not None
        assert registry.base.__name__ == hints[section].type, section
        for entry in registry:
            assert issubclass(entry.spec, registry.base), (section, entry.name)


def test_a_registry_refuses_a_spec_of_another_kind() -> None:
    class Base(BaseModel):
        pass

    class Other(BaseModel):
        pass

    registry: Registry[object] = Registry("thing", base=Base)
    with pytest.raises(TypeError, match="must subclass Base"):
        registry.register("x", spec=Other)(lambda: None)
