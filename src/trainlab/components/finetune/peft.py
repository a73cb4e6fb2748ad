"""PEFT strategies: ``lora``, ``prompt-tuning``, ``prefix-tuning`` and ``ia3``.

On a transformers model (``hf``, ``minilm``) the PEFT wrapper replaces the wrapped model inside
:class:`~trainlab.components.nets.HFModel` with the task type that fits it (sequence
classification: the classifier head also trains, as PEFT's ``modules_to_save``).  LoRA and
IA3 also work on trainlab's own models (every linear layer by default for LoRA).  Target
modules are checked against the model first, so a typo is a config error that lists the
model's linear layers.  At the end of a run the trained adapter is written with PEFT's
``save_pretrained`` to ``runs/<run_id>/peft/`` (loadable with ``PeftModel.from_pretrained``).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PositiveInt

from trainlab.components.finetune.base import FINETUNE, FinetuneSetup, FinetuneSpec
from trainlab.components.hf import require
from trainlab.errors import ConfigError
from trainlab.hooks import Callback

if TYPE_CHECKING:  # torch and HFModel (in .nets) are imported when a strategy is applied
    from torch import nn

    from trainlab.components.nets import HFModel
    from trainlab.hooks import RunState

_LINEAR_TYPES = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Distinct last names of the model's adaptable layers (q, value, c_attn, dense, ...)."""
    names: dict[str, None] = {}
    for path, module in model.named_modules():
        if path and type(module).__name__ in _LINEAR_TYPES:
            names.setdefault(path.rsplit(".", 1)[-1], None)
    return list(names)


def check_targets(model: nn.Module, targets: list[str] | None, field: str) -> None:
    """Raise ConfigError for a target that matches no module (PEFT's suffix matching)."""
    if not targets:
        return
    paths = [p for p, _ in model.named_modules() if p]
    missing = [t for t in targets if not any(p == t or p.endswith("." + t) for p in paths)]
    if missing:
        raise ConfigError(
            f"`{field}`: {', '.join(repr(m) for m in missing)} matches no module of "
            f"{type(model).__name__}; its linear layers are: "
            f"{', '.join(linear_layer_names(model)) or 'none'}", field=field)


class SavePeft(Callback):
    """At the end of an ok run (best weights loaded), save the adapter with PEFT: on rank 0
    only under DDP (every rank holds the same adapter, and writing one folder at once from
    each would interleave its files)."""

    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model

    def on_run_end(self, state: RunState, status: str) -> None:
        if status == "ok" and state.run_dir is not None and _main_rank():
            self.peft_model.save_pretrained(str(state.run_dir / "peft"))


def _main_rank() -> bool:
    """Whether this process is rank 0 of its DDP group, or not in one."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _apply(config_factory: Any, model: nn.Module, kind: str, *,
           custom_ok: bool) -> FinetuneSetup:
    from trainlab.components.nets import HFModel

    peft = require("peft", f"`finetune.name: {kind}`")
    if isinstance(model, HFModel):
        task_type = (peft.TaskType.SEQ_CLS if model.task == "sequence-classification"
                     else peft.TaskType.CAUSAL_LM)
        config = config_factory(peft, task_type, model)
        wrapped = _get_peft_model(peft, model.model, config, kind)
        model.model = wrapped
        params = [p for p in model.parameters() if p.requires_grad]
        return FinetuneSetup([{"params": params, "name": kind}], [SavePeft(wrapped)])
    if not custom_ok:
        raise ConfigError(
            f"`finetune.name`: {kind} needs a Hugging Face transformer (model.name hf or "
            f"minilm); model {type(model).__name__} has no token embeddings to prepend to. "
            "lora and ia3 work on any model", field="finetune.name")
    config = config_factory(peft, None, model)
    wrapped = _get_peft_model(peft, model, config, kind)
    params = [p for p in wrapped.parameters() if p.requires_grad]
    return FinetuneSetup([{"params": params, "name": kind}], [SavePeft(wrapped)], model=wrapped)


def _get_peft_model(peft: Any, model: nn.Module, config: Any, kind: str) -> Any:
    try:
        with warnings.catch_warnings():
            # LoRA on GPT-2's Conv1D layers: PEFT sets fan_in_fan_out itself and says so.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            # transformers 5 deprecates a property PEFT still reads; not the user's concern.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprec")
            return peft.get_peft_model(model, config)
    except (ValueError, TypeError, KeyError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ConfigError(
            f"`finetune.name`: PEFT cannot apply {kind} to {type(model).__name__}: "
            f"{type(exc).__name__}: {first}. Its linear layers are: "
            f"{', '.join(linear_layer_names(model))}", field="finetune.name") from None


# --- lora -------------------------------------------------------------------------------------


class LoraSpec(FinetuneSpec):
    """LoRA: low-rank updates W + (alpha/r) B A on the target layers; the base is frozen."""

    r: PositiveInt = Field(default=8, description="rank")
    alpha: float = Field(default=16.0, gt=0.0, description="scale = alpha / r")
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        default=None, description="layer names (default: PEFT's for the architecture, e.g. "
                                  "query/value, c_attn; every linear layer on trainlab models)")
    bias: Literal["none", "all", "lora_only"] = "none"


@FINETUNE.register("lora", spec=LoraSpec)
def build_lora(spec: LoraSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """LoRA through PEFT: rank, alpha, dropout, target modules; base frozen."""
    from trainlab.components.nets import HFModel

    inner = model.model if isinstance(model, HFModel) else model
    check_targets(inner, spec.target_modules, "finetune.target_modules")

    def config(peft: Any, task_type: Any, m: nn.Module) -> Any:
        targets: Any = spec.target_modules
        if targets is None and task_type is None:
            targets = "all-linear"
        return peft.LoraConfig(task_type=task_type, r=spec.r, lora_alpha=spec.alpha,
                               lora_dropout=spec.dropout, target_modules=targets,
                               bias=spec.bias)

    return _apply(config, model, "lora", custom_ok=True)


# --- ia3 --------------------------------------------------------------------------------------


class IA3Spec(FinetuneSpec):
    """IA3: learned vectors rescaling keys, values and feed-forward activations."""

    target_modules: list[str] | None = Field(
        default=None, description="default: PEFT's for the architecture (needed on trainlab "
                                  "models)")
    feedforward_modules: list[str] | None = Field(
        default=None, description="the targets that are feed-forward layers (scaled on input)")


@FINETUNE.register("ia3", spec=IA3Spec)
def build_ia3(spec: IA3Spec, model: nn.Module, lr: float) -> FinetuneSetup:
    """IA3 through PEFT: rescaling vectors on keys, values and feed-forward layers."""
    from trainlab.components.nets import HFModel

    inner = model.model if isinstance(model, HFModel) else model
    check_targets(inner, spec.target_modules, "finetune.target_modules")
    check_targets(inner, spec.feedforward_modules, "finetune.feedforward_modules")
    if not isinstance(model, HFModel) and spec.target_modules is None:
        raise ConfigError("`finetune.target_modules`: ia3 on a trainlab model needs the "
                          f"layers to scale; its linear layers are: "
                          f"{', '.join(linear_layer_names(model))}",
                          field="finetune.target_modules")

    def config(peft: Any, task_type: Any, m: nn.Module) -> Any:
        return peft.IA3Config(task_type=task_type, target_modules=spec.target_modules,
                              feedforward_modules=spec.feedforward_modules or (
                                  [] if spec.target_modules else None))

    return _apply(config, model, "ia3", custom_ok=True)


# --- prompt tuning and prefix tuning ----------------------------------------------------------


class PromptTuningSpec(FinetuneSpec):
    """Prompt tuning (Lester et al.): trainable virtual-token embeddings before the input."""

    num_virtual_tokens: PositiveInt = 20
    init: Literal["random", "text"] = Field(
        default="random", description="text: start from the embeddings of init_text")
    init_text: str | None = Field(default=None, description="with init: text")


@FINETUNE.register("prompt-tuning", spec=PromptTuningSpec)
def build_prompt_tuning(spec: PromptTuningSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Prompt tuning through PEFT: num_virtual_tokens trainable input embeddings."""
    if spec.init == "text" and not spec.init_text:
        raise ConfigError("`finetune.init_text`: init: text needs the text to start from",
                          field="finetune.init_text")

    def config(peft: Any, task_type: Any, m: nn.Module) -> Any:
        import torch

        on_meta = torch.empty(()).device.type == "meta"
        if spec.init == "text" and not on_meta:  # the text's embeddings need real weights
            return peft.PromptTuningConfig(
                task_type=task_type, num_virtual_tokens=spec.num_virtual_tokens,
                prompt_tuning_init=peft.PromptTuningInit.TEXT,
                prompt_tuning_init_text=spec.init_text,
                tokenizer_name_or_path=getattr(m, "source", None))
        return peft.PromptTuningConfig(task_type=task_type,
                                       num_virtual_tokens=spec.num_virtual_tokens)

    return _apply(config, model, "prompt-tuning", custom_ok=False)


class PrefixTuningSpec(FinetuneSpec):
    """Prefix tuning (Li & Liang): trainable key/value prefixes in every attention layer."""

    num_virtual_tokens: PositiveInt = 20
    projection: bool = Field(default=False,
                             description="reparameterise the prefix through an MLP")
    projection_dim: PositiveInt | None = Field(default=None,
                                               description="the MLP's width (default: hidden)")


@FINETUNE.register("prefix-tuning", spec=PrefixTuningSpec)
def build_prefix_tuning(spec: PrefixTuningSpec, model: nn.Module, lr: float) -> FinetuneSetup:
    """Prefix tuning through PEFT: trainable key/value prefixes in every attention layer."""
    from trainlab.components.nets import HFModel


    def config(peft: Any, task_type: Any, m: nn.Module) -> Any:
        kwargs: dict[str, Any] = {"prefix_projection": spec.projection}
        if spec.projection_dim is not None:
            kwargs["encoder_hidden_size"] = spec.projection_dim
        return peft.PrefixTuningConfig(task_type=task_type,
                                       num_virtual_tokens=spec.num_virtual_tokens, **kwargs)

    if isinstance(model, HFModel):
        check_prefix_support(model)
    return _apply(config, model, "prefix-tuning", custom_ok=False)


def _names_past_key_values(forward: Any) -> bool:
    import inspect

    try:
        return "past_key_values" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def _renames_past_key_values(forward: Any) -> bool:
    """Whether a wrapper of ``forward`` (transformers' ``deprecate_kwarg``) still accepts
    ``past_key_values`` and passes it on under its new name."""
    fn = getattr(forward, "__func__", forward)
    while fn is not None:
        code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
        if code is not None and len(code.co_freevars) == len(cells):
            bound: dict[str, Any] = {}
            for name, cell in zip(code.co_freevars, cells):
                try:
                    bound[name] = cell.cell_contents
                except ValueError:  # an empty cell
                    continue
            if (bound.get("old_name") == "past_key_values" and bound.get("new_name")
                    and not (bound.get("raise_if_greater_or_equal_version")
                             and bound.get("is_greater_or_equal_version"))):
                return True
        fn = getattr(fn, "__wrapped__", None)
    return False


def check_prefix_support(model: HFModel) -> None:
    """Refuse prefix tuning, at plan time, where PEFT cannot hand the installed transformers
    model its prefix.

    PEFT passes the trained prefix as the ``past_key_values`` argument.  For sequence
    classification it first checks that the model's forward (or its backbone's) names that
    argument and fails at the first training step otherwise: transformers 5.24 renamed it
    ``cache``.  For causal LM it passes the argument as it is, which works while the forward
    takes it or a deprecation shim renames it.  The same checks run here, on the model.
    """
    from torch import nn

    inner = model.model
    forwards = [inner.forward]
    if model.task == "sequence-classification":
        pretrained = getattr(require("transformers", "`finetune.name: prefix-tuning`"),
                             "PreTrainedModel", nn.Module)
        # PEFT's fallback: the first child that is a transformers model (the backbone).
        backbone = next((m for _, m in inner.named_children() if isinstance(m, pretrained)),
                        None)
        if backbone is not None:
            forwards.append(backbone.forward)
        if any(_names_past_key_values(f) for f in forwards):
            return
    elif _names_past_key_values(inner.forward) or _renames_past_key_values(inner.forward):
        return
    import inspect

    transformers = require("transformers", "`finetune.name: prefix-tuning`")
    peft = require("peft", "`finetune.name: prefix-tuning`")
    try:
        params = list(inspect.signature(inner.forward).parameters)
    except (TypeError, ValueError):
        params = []
    takes = " (it takes `cache` instead)" if "cache" in params else ""
    raise ConfigError(
        f"`finetune.name`: prefix-tuning cannot work with the installed transformers "
        f"{transformers.__version__} and peft {peft.__version__}: PEFT passes the prefix as "
        f"`past_key_values`, which {type(inner).__name__}.forward does not accept{takes}, so "
        f"{model.task} training would fail at its first step. Use prompt-tuning, lora or ia3 "
        "here, or a transformers release whose models take `past_key_values` (5.23 and "
        "earlier)", field="finetune.name")
