"""Fine-tuning strategies on tiny trainlab models: what trains, what gets gradients, parameter
counts, the LR of each group in each epoch, the unfreezing schedule, and resume."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from trainlab.components import FINETUNE, build_finetune, build_model, load_dataset
from trainlab.components.finetune.adapter import Adapter
from trainlab.components.finetune.discriminative_lr import group_factors
from trainlab.components.finetune.layers import layer_groups
from trainlab.config.schema import resolve_component, resolve_run
from trainlab.engine import Callback, RunState, train
from trainlab.errors import ConfigError
from trainlab.records import NullSink

CLS = {"name": "synthetic", "n_samples": 192, "shape": [6], "n_classes": 3, "batch_size": 32}
LM = {"name": "pydoc-lm", "seq_len": 8, "limit": 64, "batch_size": 16}
GPT = {"name": "gpt", "embed_dim": 16, "heads": 2, "layers": 3, "dropout": 0.0}
MLP = {"name": "mlp", "hidden": [8, 8]}


def _model(model: dict[str, Any], data: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    info = load_dataset(resolve_component("data", data)).info
    return build_model(resolve_component("model", model), info)


def _setup(finetune: dict[str, Any], model: dict[str, Any] = GPT, data: dict[str, Any] = LM,
           lr: float = 0.1):
    net = _model(model, data)
    return net, build_finetune(resolve_component("finetune", finetune), net, lr)


def _run(finetune: dict[str, Any], *, model: dict[str, Any] = GPT, data: dict[str, Any] = LM,
         epochs: int = 3, callbacks: tuple[Callback, ...] = (), run_dir: Path | None = None,
         schedule: dict[str, Any] | None = None, optimizer: str = "sgd"):
    raw = {"data": data, "model": model, "optimizer": {"name": optimizer, "lr": 0.1},
           "schedule": schedule or {"name": "constant"}, "finetune": finetune,
           "train": {"epochs": epochs, "log_every": 2}}
    sink = NullSink()
    outcome = train(resolve_run(raw), sink=sink, callbacks=callbacks, run_dir=run_dir)
    assert outcome.status == "ok", outcome.error
    return outcome, sink


def _grad_state(model: torch.nn.Module) -> dict[str, bool]:
    return {n: p.grad is not None for n, p in model.named_parameters()}


# --- layer groups -----------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "data", "names"), [
    (GPT, LM, ["embeddings", "block0", "block1", "block2"]),  # post-LN: tied head, no ln_f
    ({**GPT, "norm": "pre"}, LM, ["embeddings", "block0", "block1", "block2", "head"]),
    (MLP, CLS, ["layer1", "layer3", "layer5"]),
    ({"name": "lstm", "embed_dim": 8, "hidden_dim": 8}, LM, ["embed", "lstm", "decoder"]),
    ({"name": "cnn", "channels": [2], "fc": [4]}, {**CLS, "shape": [1, 8, 8]},
     ["layer0", "layer4", "layer6"]),
])
def test_layer_groups_are_found_bottom_to_top(model: dict, data: dict, names: list[str]) -> None:
    net = _model(model, data)
    groups = layer_groups(net)
    assert [g.name for g in groups] == names
    flat = [id(p) for g in groups for p in g.params]
    assert len(flat) == len(set(flat)) == len(list(net.parameters()))  # each tensor once


def test_layer_groups_by_name_patterns() -> None:
    net = _model(GPT, LM)
    groups = layer_groups(net, {"low": r"^(tokens|positions|blocks\.0)\.", "rest": ".*"})
    assert [g.name for g in groups] == ["low", "rest"]
    assert all(n.startswith(("tokens", "positions", "blocks.0")) for n in groups[0].names)
    with pytest.raises(ConfigError,
                       match=r"37 parameters match no pattern, e\.g\. positions\.weight"):
        layer_groups(net, {"low": r"^tokens"})
    with pytest.raises(ConfigError, match="'none' match no parameter"):
        layer_groups(net, {"all": ".*", "none": "nothing"})


# --- full and freeze-base ---------------------------------------------------------------------


def test_freeze_base_trains_the_head_only_and_computes_no_other_gradients() -> None:
    net, setup = _setup({"name": "freeze-base"}, MLP, CLS)
    head = net[5]
    assert [g["name"] for g in setup.param_groups] == ["layer5"]
    assert {id(p) for p in setup.param_groups[0]["params"]} == {id(p) for p in head.parameters()}
    x = torch.randn(4, 6)
    torch.nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 0])).backward()
    grads = _grad_state(net)
    assert grads == {n: n.startswith("5.") for n in grads}


def test_freeze_base_records_trainable_counts_and_checkpoints_the_head_only(
        tmp_path: Path) -> None:
    outcome, sink = _run({"name": "freeze-base"}, model=MLP, data=CLS, run_dir=tmp_path,
                         epochs=2)
    net = _model(MLP, CLS)
    total = sum(p.numel() for p in net.parameters())
    head = sum(p.numel() for p in net[5].parameters())
    assert outcome.summary["params_trainable"] == head
    assert outcome.summary["params_trainable_pct"] == pytest.approx(100 * head / total)
    recorded = {r.key: r.value for r in sink.records if r.key.startswith("params/")}
    assert recorded == {"params/total": total, "params/trainable": head,
                        "params/trainable_pct": pytest.approx(100 * head / total)}
    saved = torch.load(tmp_path / "last.pt", weights_only=False)["model"]
    assert sorted(saved) == ["5.bias", "5.weight"]  # frozen weights equal the seeded build


def test_full_keeps_every_parameter_and_one_group() -> None:
    net, setup = _setup({"name": "full"})
    assert len(setup.param_groups) == 1
    assert len(setup.param_groups[0]["params"]) == len(list(net.parameters()))


# --- discriminative learning rates -------------------------------------------------------------


def test_group_factors() -> None:
    assert group_factors(3, "geometric", 2.6, 0.1) == pytest.approx([1 / 2.6**2, 1 / 2.6, 1.0])
    assert group_factors(3, "linear", 2.6, 0.1) == pytest.approx([0.1, 0.55, 1.0])
    assert group_factors(1, "linear", 2.6, 0.5) == [1.0]


def test_discriminative_lr_gives_each_group_its_lr_in_each_epoch() -> None:
    _outcome, sink = _run({"name": "discriminative-lr", "decay": 2.0},
                         schedule={"name": "step", "step_size": 1, "gamma": 0.5}, epochs=3)
    names = ["embeddings", "block0", "block1", "block2"]
    per_epoch: dict[int, dict[str, float]] = {}
    for r in sink.records:
        if r.key.startswith("lr/"):
            per_epoch.setdefault(r.epoch, {})[r.key[3:]] = r.value  # the epoch's last value
    assert sorted(per_epoch) == [1, 2, 3]
    for epoch, lrs in per_epoch.items():
        assert list(lrs) == names
        scale = 0.5 ** (epoch - 1)  # StepLR halves every group's LR after each epoch
        for depth, name in enumerate(reversed(names)):
            assert lrs[name] == pytest.approx(0.1 * scale / 2.0**depth), (epoch, name)


# --- gradual unfreezing -----------------------------------------------------------------------


class _Watch(Callback):
    """Records, per epoch, which layer groups require grad and which received gradients."""

    def __init__(self, groups: dict[str, list[str]]) -> None:
        self.groups = groups
        self.trainable: dict[int, set[str]] = {}
        self.with_grad: dict[int, set[str]] = {}

    def on_step_end(self, state: RunState) -> None:
        params = dict(state.model.named_parameters())
        self.trainable[state.epoch] = {g for g, names in self.groups.items()
                                       if all(params[n].requires_grad for n in names)}
        self.with_grad.setdefault(state.epoch, set()).update(
            g for g, names in self.groups.items() if any(params[n].grad is not None
                                                         for n in names))


def test_gradual_unfreeze_schedule_and_no_gradients_for_frozen_groups() -> None:
    groups = {g.name: g.names for g in layer_groups(_model(GPT, LM))}
    watch = _Watch(groups)
    outcome, _ = _run({"name": "gradual-unfreeze"}, callbacks=(watch,), epochs=5)
    order = ["block2", "block1", "block0", "embeddings"]  # from the top
    for epoch in range(1, 6):
        expected = set(order[:min(epoch, 4)])
        assert watch.trainable[epoch] == expected, epoch
        assert watch.with_grad[epoch] == expected, epoch  # frozen: no gradient computed
    assert outcome.summary["params_trainable_pct"] == pytest.approx(100.0)


def test_gradual_unfreeze_that_ends_early_reports_what_trained() -> None:
    """Three epochs unfreeze three of four groups: the embeddings never trained, and the
    summary's trainable share says so (not 100 %)."""
    net = _model(GPT, LM)
    groups = {g.name: g.names for g in layer_groups(net)}
    sizes = dict(net.named_parameters())
    trained = sum(sizes[n].numel() for g in ("block2", "block1", "block0") for n in groups[g])
    outcome, _ = _run({"name": "gradual-unfreeze"}, epochs=3)
    assert outcome.summary["params_trainable"] == trained
    assert outcome.summary["params_trainable_pct"] == pytest.approx(
        100.0 * trained / outcome.summary["params_total"])
    assert outcome.summary["params_trainable_pct"] < 100.0


def test_gradual_unfreeze_every_two_epochs_with_discriminative_lrs() -> None:
    _net, setup = _setup({"name": "gradual-unfreeze", "every": 2, "decay": 2.0})
    callback = setup.callbacks[0]
    assert [callback.count_at(e) for e in range(1, 9)] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert [g["lr"] for g in setup.param_groups] == pytest.approx([0.1 / 8, 0.1 / 4, 0.1 / 2,
                                                                   0.1])
    # At build time only the top group trains (what plan checks and counts see).
    assert [all(p.requires_grad for p in g["params"]) for g in setup.param_groups] == [
        False, False, False, True]


class _Interrupt(Callback):
    def __init__(self, at_epoch: int) -> None:
        self.at_epoch = at_epoch

    def on_epoch_start(self, state: RunState) -> None:
        if state.epoch == self.at_epoch:
            raise KeyboardInterrupt


def test_gradual_unfreeze_resumes_mid_schedule_bit_identically(tmp_path: Path) -> None:
    finetune = {"name": "gradual-unfreeze", "adapter": False}
    _run(finetune, epochs=4, run_dir=tmp_path / "straight", optimizer="adam")
    raw = {"data": LM, "model": GPT, "optimizer": {"name": "adam", "lr": 0.1},
           "finetune": finetune,
           # A checkpoint at every epoch's end (these epochs are far shorter than 10 s).
           "train": {"epochs": 4, "log_every": 2, "checkpoint_every_s": 0}}
    cut = train(resolve_run(raw), run_dir=tmp_path / "cut", sink=NullSink(),
                callbacks=[_Interrupt(3)])
    assert cut.status == "interrupted"
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["callbacks"]["GradualUnfreeze"] == {"unfrozen": 2}
    groups = {g.name: g.names for g in layer_groups(_model(GPT, LM))}
    watch = _Watch(groups)
    resumed = train(resolve_run(raw), run_dir=tmp_path / "cut", sink=NullSink(),
                    callbacks=[watch])
    assert resumed.status == "ok", resumed.error
    assert sorted(watch.trainable) == [3, 4]
    assert watch.trainable[3] == {"block2", "block1", "block0"}
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- adapters ---------------------------------------------------------------------------------


def test_adapters_go_after_attention_and_feed_forward_of_each_block() -> None:
    base = _model(GPT, LM).eval()
    net, setup = _setup({"name": "adapter", "reduction": 4})
    net.eval()
    adapters = [m for m in net.modules() if isinstance(m, Adapter)]
    assert len(adapters) == 2 * GPT["layers"]
    assert all(hasattr(b.proj, "adapter") and hasattr(b.ff[2], "adapter") for b in net.blocks)
    assert adapters[0].down.out_features == 16 // 4
    x = torch.randint(0, 50, (2, 8))
    with torch.no_grad():  # near identity at the start
        assert torch.allclose(net(x), base(x), atol=1e-2)
        assert not torch.equal(net(x), base(x))  # but applied
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {n for n, _ in net.named_parameters()
                       if ".adapter." in n or ".ln" in n}
    assert {id(p) for g in setup.param_groups for p in g["params"]} == {
        id(p) for p in net.parameters() if p.requires_grad}
    torch.nn.functional.cross_entropy(net(x).flatten(0, 1), x.flatten()).backward()
    assert {n for n, g in _grad_state(net).items() if g} == trained


def test_adapter_with_a_scheme_tunes_adapters_under_that_scheme() -> None:
    net, setup = _setup({"name": "discriminative-lr", "adapter": True, "decay": 2.0})
    # The embeddings group has nothing left to train (base frozen), so it is dropped.
    assert [g["name"] for g in setup.param_groups] == ["block0", "block1", "block2"]
    assert [g["lr"] for g in setup.param_groups] == pytest.approx([0.1 / 4, 0.1 / 2, 0.1])
    assert all(".adapter." in n or ".ln" in n for n, p in net.named_parameters()
               if p.requires_grad)
    _, setup_base = _setup({"name": "discriminative-lr", "adapter": True, "train_base": True})
    assert len(setup_base.param_groups) == 4


def test_adapters_on_a_model_without_blocks_list_what_it_has() -> None:
    with pytest.raises(ConfigError, match=r"no stack of blocks.*top-level modules: 0 \(Flatten\)"):
        _setup({"name": "adapter"}, MLP, CLS)
    with pytest.raises(ConfigError, match=r"block 0 .* has no modules \['nope'\].*Its linear "
                                          r"layers: qkv, proj, ff.0, ff.2"):
        _setup({"name": "adapter", "targets": ["nope"]})


# --- PEFT on a trainlab model -------------------------------------------------------------------


def test_lora_on_a_trainlab_model_trains_low_rank_factors_only() -> None:
    pytest.importorskip("peft")
    _net, setup = _setup({"name": "lora", "r": 2, "target_modules": ["qkv", "proj"]})
    assert setup.model is not None  # PEFT wrapped the model
    names = {n for n, p in setup.model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 2 * GPT["layers"]  # A and B for two targets per block
    with pytest.raises(ConfigError, match=r"'qkvv' matches no module of GPT; its linear layers "
                                          r"are: tokens, positions, qkv, proj"):
        _setup({"name": "lora", "target_modules": ["qkvv"]})


def test_prompt_tuning_needs_a_transformers_model() -> None:
    pytest.importorskip("peft")
    with pytest.raises(ConfigError, match="needs a Hugging Face transformer"):
        _setup({"name": "prompt-tuning"})


def test_every_strategy_is_registered_with_a_doc() -> None:
    assert set(FINETUNE.names()) == {"full", "freeze-base", "discriminative-lr",
                                     "gradual-unfreeze", "adapter", "lora", "prompt-tuning",
                                     "prefix-tuning", "ia3"}
    assert all(entry.doc for entry in FINETUNE)


def test_strategies_build_on_the_meta_device() -> None:
    pytest.importorskip("peft")
    info = load_dataset(resolve_component("data", copy.deepcopy(LM))).info
    for finetune in ({"name": "adapter"}, {"name": "gradual-unfreeze", "adapter": True},
                     {"name": "lora"}, {"name": "freeze-base"}):
        with torch.device("meta"):
            net = build_model(resolve_component("model", GPT), info)
            setup = build_finetune(resolve_component("finetune", finetune), net, 0.1)
        assert all(p.device.type == "meta" for g in setup.param_groups for p in g["params"])


@pytest.mark.parametrize(("finetune", "message"), [
    ({"name": "adapter"}, "no stack of blocks was recognised in this model (Sequential; "
                          "top-level modules: 0 (Flatten), 1 (Linear)"),
    ({"name": "gradual-unfreez"}, "unknown fine-tuning strategy 'gradual-unfreez'; did you mean "
                                  "'gradual-unfreeze'?"),
    ({"name": "freeze-base", "train_groups": 3}, "would train all 3 layer groups"),
])
def test_bad_fine_tuning_exits_2_before_training(finetune: dict[str, Any], message: str,
                                                 tiny: dict[str, Any], write_config: Any,
                                                 store_dir: Path) -> None:
    from typer.testing import CliRunner

    from trainlab.cli import app
    from trainlab.store import open_store

    tiny["model"] = MLP
    tiny["finetune"] = finetune
    result = CliRunner().invoke(app, ["run", str(write_config(tiny)), "--store", str(store_dir)])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert open_store(store_dir).runs().empty
