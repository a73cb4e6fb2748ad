"""Prefix tuning is refused at plan time where PEFT cannot pass the installed transformers model
its prefix (transformers 5.24 renamed ``past_key_values`` to ``cache``); other strategies stay."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.components.finetune.peft import check_prefix_support
from trainlab.components.hf import HFModel
from trainlab.config.schema import resolve_run
from trainlab.engine import train
from trainlab.errors import ConfigError
from trainlab.records import NullSink

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("datasets")


class _OldNames(nn.Module):
    def forward(self, input_ids: Any = None, past_key_values: Any = None, **kwargs: Any) -> Any:
        return input_ids


class _NewNames(nn.Module):
    def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> Any:
        return input_ids


class _Shimmed(nn.Module):
    """A forward that renamed the argument but still takes the old name (with a warning)."""

    def forward(self, input_ids: Any = None, cache: Any = None, **kwargs: Any) -> Any:
        return cache


class _WithBackbone(nn.Module):
    """A classifier whose own forward lacks the argument but whose backbone has it."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.transformer = backbone

    def forward(self, input_ids: Any = None, **kwargs: Any) -> Any:
        return input_ids


def _hf(inner: nn.Module, task: str) -> HFModel:
    return HFModel(inner, task, 0, "x")


def _deprecate(cls: type[nn.Module]) -> None:
    deprecation = pytest.importorskip("transformers.utils.deprecation")
    cls.forward = deprecation.deprecate_kwarg(  # type: ignore[method-assign]
        "past_key_values", "99.0.0", new_name="cache")(cls.forward)


_deprecate(_Shimmed)


def test_the_check_follows_what_peft_does() -> None:
    for task in ("sequence-classification", "causal-lm"):
        check_prefix_support(_hf(_OldNames(), task))
        with pytest.raises(ConfigError) as err:
            check_prefix_support(_hf(_NewNames(), task))
        assert err.value.field == "finetune.name"
    # Causal LM: PEFT passes the keyword as it is, which a renaming shim accepts.
    check_prefix_support(_hf(_Shimmed(), "causal-lm"))
    # Classification: PEFT checks the signature (then its backbone's) and the shim's hides it.
    with pytest.raises(ConfigError):
        check_prefix_support(_hf(_Shimmed(), "sequence-classification"))
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20,
                                     n_positions=16)
    backbone = transformers.GPT2Model(config)
    backbone_takes_it = "past_key_values" in inspect.signature(
        backbone.forward).parameters
    if backbone_takes_it:
        check_prefix_support(_hf(_WithBackbone(backbone), "sequence-classification"))
    else:
        with pytest.raises(ConfigError):
            check_prefix_support(_hf(_WithBackbone(backbone), "sequence-classification"))


def test_the_message_names_field_value_versions_and_reason() -> None:
    with pytest.raises(ConfigError) as err:
        check_prefix_support(_hf(_NewNames(), "sequence-classification"))
    text = str(err.value)
    assert text.startswith("`finetune.name`: prefix-tuning cannot work")
    assert f"transformers {transformers.__version__}" in text
    assert f"peft {peft.__version__}" in text
    assert "`past_key_values`" in text and "takes `cache` instead" in text
    assert "_NewNames.forward" in text and "prompt-tuning, lora or ia3" in text


def _rename_gpt2_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    """GPT-2 as transformers >= 5.24 declares it: the argument is called ``cache``."""
    def renamed(original: Any) -> Any:
        def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original(self, *args, **kwargs)

        sig = inspect.signature(original)
        forward.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
            p.replace(name="cache") if p.name == "past_key_values" else p
            for p in sig.parameters.values()])
        return forward

    for name in ("GPT2Model", "GPT2ForSequenceClassification", "GPT2LMHeadModel"):
        cls = getattr(transformers, name)
        monkeypatch.setattr(cls, "forward", renamed(cls.forward))


def _sweep(tiny_hf: dict[str, str], sentiment_dir: str, finetune: str) -> dict[str, Any]:
    return {"name": "p", "data": {"name": "hf", "path": sentiment_dir, "max_length": 8,
                                  "batch_size": 16},
            "model": {"name": "hf", "path": tiny_hf["gpt2"]},
            "finetune": {"name": finetune, "num_virtual_tokens": 3}
            if finetune.endswith("tuning") else {"name": finetune},
            "train": {"epochs": 1}}


def test_a_renamed_argument_refuses_prefix_tuning_alone_at_plan_time(
        monkeypatch: pytest.MonkeyPatch, write_config: Any, tiny_hf: dict[str, str],
        sentiment_dir: str, tmp_path: Path) -> None:
    _rename_gpt2_argument(monkeypatch)
    config = write_config(_sweep(tiny_hf, sentiment_dir, "prefix-tuning"), "prefix.yaml")
    result = CliRunner().invoke(app, ["run", str(config), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "`finetune.name`: prefix-tuning cannot work with the installed transformers" in text
    assert transformers.__version__ in text and "GPT2ForSequenceClassification" in text
    assert "Traceback" not in result.output
    from trainlab.store import open_store

    assert open_store(tmp_path / "s").runs().empty  # refused before anything trained
    for other in ("lora", "prompt-tuning"):  # the other strategies still plan
        ok = write_config(_sweep(tiny_hf, sentiment_dir, other), f"{other}.yaml")
        result = CliRunner().invoke(app, ["plan", str(ok), "--store", str(tmp_path / "s")])
        assert result.exit_code == 0, result.output


def test_prefix_tuning_classification_is_refused_exactly_where_peft_fails(
        write_config: Any, tiny_hf: dict[str, str], sentiment_dir: str, tmp_path: Path) -> None:
    """With the installed transformers: either refused at plan time, or it trains."""
    raw = _sweep(tiny_hf, sentiment_dir, "prefix-tuning")
    forward = transformers.GPT2ForSequenceClassification.forward
    if "past_key_values" in inspect.signature(forward).parameters:  # transformers < 5.24
        outcome = train(resolve_run(raw), sink=NullSink())
        assert outcome.status == "ok", outcome.error
        return
    config = write_config(raw)
    result = CliRunner().invoke(app, ["plan", str(config), "--store", str(tmp_path / "s")])
    assert result.exit_code == 2, result.output
    assert transformers.__version__ in " ".join(result.output.split())


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated")
def test_prefix_tuning_on_a_causal_lm_trains(tiny_hf: dict[str, str], tmp_path: Path) -> None:
    texts = [f"the movie was {w} and the end" for w in ["good", "bad", "nice", "sad"] * 20]
    path = tmp_path / "lm.json"
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    raw = {"data": {"name": "hf", "path": "json", "data_files": str(path), "label": None,
                    "max_length": 12, "batch_size": 8},
           "model": {"name": "hf", "path": tiny_hf["gpt2"]},
           "optimizer": {"name": "adamw", "lr": 1e-2},
           "finetune": {"name": "prefix-tuning", "num_virtual_tokens": 3},
           "train": {"epochs": 1, "log_every": 5}}
    outcome = train(resolve_run(raw), sink=NullSink())
    assert outcome.status == "ok", outcome.error
    assert torch.isfinite(torch.tensor(outcome.summary["test_perplexity"]))
    assert 0 < outcome.summary["params_trainable_pct"] < 30


# --- FLOPs and MFU of wrapped models (issue 21) -------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_peft_and_adapter_runs_have_flops(tiny_hf: dict[str, str], arch: str) -> None:
    """FLOPs are traced on the meta device for every fine-tuning method (GPT-2 has a pad token
    and no mask there: transformers' padding check read the ids' values and the trace failed,
    so LoRA and adapter runs had no MFU).  Frozen weights need no weight gradients: LoRA and
    adapters cost less than full fine-tuning; prompt tuning runs its virtual tokens through
    the model, so it costs more than full fine-tuning at the real length and less than full
    fine-tuning at the real plus virtual length."""
    from trainlab.components import DataInfo
    from trainlab.config.schema import resolve_component
    from trainlab.engine.flops import train_step_flops

    def info(length: int) -> DataInfo:
        return DataInfo("x", "classification", (length,), 2, 100, 10, 10, vocab_size=64,
                        pad_token_id=0)

    model = resolve_component("model", {"name": "hf", "path": tiny_hf[arch]})

    def flops(name: str, length: int = 8, **extra: Any) -> int:
        spec = resolve_component("finetune", {"name": name, **extra})
        count = train_step_flops(model, info(length), 4, spec)
        assert count is not None and count > 0, name
        return count

    full = flops("full")
    assert flops("lora") < full and flops("adapter") < full
    prompt = flops("prompt-tuning", num_virtual_tokens=4)
    assert full < prompt < flops("full", length=12)
