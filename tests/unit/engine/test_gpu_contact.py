"""First contact with a GPU (issue 25, items 9-18): the CUDA logic pinned down on the CPU with
fakes of torch.cuda; what only a GPU can show is in tests/integration/test_gpu_crashes.py."""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from trainlab.components.datasets import Split
from trainlab.components.finetune.peft import SavePeft
from trainlab.components.nets import HFModel, note_padding
from trainlab.config.schema import resolve_run
from trainlab.engine import Callback, RunState, resume, train
from trainlab.engine import loop as loop_module
from trainlab.engine import speed as speed_module
from trainlab.engine.determinism import deterministic
from trainlab.engine.measure import clip_grad_norm, grad_norm
from trainlab.engine.speed import Speed, scaler_sync_note
from trainlab.errors import ConfigError
from trainlab.records import NullSink

BASE: dict[str, Any] = {
    "data": {"name": "synthetic", "n_samples": 120, "shape": [6], "n_classes": 3,
             "batch_size": 16},
    "model": {"name": "mlp", "hidden_dim": 8, "dropout": 0.0},
    "optimizer": {"name": "adam", "lr": 0.01},
    "train": {"epochs": 2, "seed": 3, "log_every": 2},
}


def _cfg(**sections: dict[str, Any]) -> Any:
    raw = copy.deepcopy(BASE)
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return resolve_run(raw)


# --- 9: the CUDA RNG state of the run's own device -------------------------------------------


class _FakeCudaRng:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.got: list[Any] = []
        self.set: list[tuple[torch.Tensor, Any]] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: pytest.fail("every GPU's state saved"))
        monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                            lambda states: pytest.fail("every GPU's state restored"))
        monkeypatch.setattr(torch.cuda, "get_rng_state", self._get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: self.set.append((s, d)))

    def _get(self, device: Any) -> torch.Tensor:
        self.got.append(device)
        return torch.tensor([7], dtype=torch.uint8)


def test_a_checkpoint_saves_the_cuda_rng_of_the_runs_device_only(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCudaRng(monkeypatch)
    state = resume.cuda_rng_state(torch.device("cuda", 1))
    assert fake.got == [torch.device("cuda", 1)] and state is not None and state.tolist() == [7]
    assert resume.cuda_rng_state(torch.device("cpu")) is None  # a CPU run: none
    assert fake.got == [torch.device("cuda", 1)]


def test_resume_restores_the_runs_device_from_new_and_older_checkpoints(
        monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _FakeCudaRng(monkeypatch)
    one = torch.tensor([1], dtype=torch.uint8)
    resume.set_cuda_rng_state(one, torch.device("cuda", 0))
    # An older checkpoint: a list of 4 GPUs' states (a --jobs 1 run on 4 GPUs), resumed in
    # a process that sees one GPU (a --jobs 4 worker): its device's entry, no IndexError.
    four = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]
    resume.set_cuda_rng_state(four, torch.device("cuda", 0))
    resume.set_cuda_rng_state(four, torch.device("cuda", 2))
    resume.set_cuda_rng_state(four[:1], torch.device("cuda", 3))  # saw fewer: the first
    resume.set_cuda_rng_state(four, torch.device("cuda"))  # no index: the current one
    resume.set_cuda_rng_state(four, torch.device("cpu"))  # a CPU run: nothing
    resume.set_cuda_rng_state(None, torch.device("cuda", 0))
    assert [(int(s[0]), d) for s, d in fake.set] == [
        (1, torch.device("cuda", 0)), (0, torch.device("cuda", 0)), (2, torch.device("cuda", 2)),
        (0, torch.device("cuda", 3)), (0, torch.device("cuda"))]


def test_a_cpu_run_resumes_a_checkpoint_that_holds_every_gpus_state(tmp_path: Path) -> None:
    config = _cfg(train={"epochs": 3})
    train(config, run_dir=tmp_path, sink=NullSink())
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["rng"]["cuda"] is None  # a CPU run saves no CUDA state
    ckpt["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)] * 4  # the older format
    ckpt["epoch"] = 2
    from trainlab.engine.checkpoint import save_atomic

    save_atomic(ckpt, tmp_path / "last.pt")
    outcome = train(config, run_dir=tmp_path, sink=NullSink(), resume=True)
    assert outcome.status == "ok", outcome.error


# --- 10: padding decided on the host ----------------------------------------------------------


class _FakeTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3)
        self.masks: list[torch.Tensor | None] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
        self.masks.append(attention_mask)
        return SimpleNamespace(logits=self.emb(input_ids).sum(1))


def test_data_without_padding_gets_no_mask_and_padded_data_keeps_it() -> None:
    inner = _FakeTransformer()
    model = nn.Sequential(HFModel(inner, "sequence-classification", 0, "here"))
    full = Split(torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([0, 1]))
    padded = Split(torch.tensor([[1, 2, 0], [4, 5, 6]]), torch.tensor([0, 1]))
    note_padding(model, [full, full])
    model(full.inputs)
    assert inner.masks[-1] is None  # no mask: transformers has nothing to check on the host
    note_padding(model, [full, padded])  # any split with a pad token: the mask stays
    model(padded.inputs)
    mask = inner.masks[-1]
    assert mask is not None and mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    note_padding(model, [full, object()])  # a Dataset's items may hold padding: the mask stays
    model(full.inputs)
    assert inner.masks[-1] is not None


# --- 11: fp16 with an optimizer the scaler cannot hand its flags to --------------------------


def test_fp16_on_cuda_warns_of_the_scalers_sync_for_unfused_optimizers() -> None:
    params = [nn.Parameter(torch.zeros(2))]
    cuda16 = SimpleNamespace(scaler=object(), device=torch.device("cuda"))
    note = scaler_sync_note(cuda16, torch.optim.RMSprop(params))  # type: ignore[arg-type]
    assert note is not None and "RMSprop" in note and ".item()" in note and "bf16" in note
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    note = scaler_sync_note(cuda16, sgd)  # type: ignore[arg-type]
    assert note is not None and "optimizer.fused: true" in note
    fused = torch.optim.Adam(params, fused=True)  # hands found-inf to its kernel: no sync
    assert scaler_sync_note(cuda16, fused) is None  # type: ignore[arg-type]
    cpu16 = SimpleNamespace(scaler=object(), device=torch.device("cpu"))
    assert scaler_sync_note(cpu16, sgd) is None  # type: ignore[arg-type]
    cuda32 = SimpleNamespace(scaler=None, device=torch.device("cuda"))
    assert scaler_sync_note(cuda32, sgd) is None  # type: ignore[arg-type]


# --- 12: host data pinned a batch at a time, never a whole split ------------------------------


def _host_speed(channels_last: bool = False) -> Speed:
    return Speed(torch.device("cpu"), None, None, channels_last, False, nn.Identity(), False, 1)


def test_host_batches_are_pinned_once_each_and_keep_their_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pinned: list[tuple[int, ...]] = []

    def page_locked(shape: Any, dtype: torch.dtype) -> torch.Tensor:
        pinned.append(tuple(shape))
        return torch.empty(tuple(shape), dtype=dtype)  # this machine has no pinned allocator

    monkeypatch.setattr(speed_module, "page_locked", page_locked)
    monkeypatch.setattr(torch.Tensor, "pin_memory",
                        lambda self, *a, **k: pytest.fail("a tensor pinned after the fact"))
    split = Split(torch.randn(50, 3), torch.arange(50))
    assert loop_module._on_host(split) is split  # the split itself is left pageable
    order = torch.randperm(50, generator=torch.Generator().manual_seed(0))
    batches = list(order.split(16))
    got = list(_host_speed().batches(split, batches))
    for (idx, x, y), want in zip(got, batches):
        assert torch.equal(idx, want)
        assert torch.equal(x, split.inputs[want]) and torch.equal(y, split.targets[want])
    assert pinned == [(16, 3), (16,), (16, 3), (16,), (16, 3), (16,), (2, 3), (2,)]
    pinned.clear()
    evals = list(_host_speed().eval_batches(split, 0, 50, 32))
    assert torch.equal(torch.cat([x for x, _ in evals]), split.inputs)
    assert torch.equal(torch.cat([y for _, y in evals]), split.targets)
    assert max(shape[0] for shape in pinned) == 32  # batches, never the 50 rows of the split


# --- 13: the LR range test decides as the run does --------------------------------------------


def test_the_range_test_places_and_autocasts_as_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.lr import range_test as rt

    config = _cfg(train={"precision": "bf16", "device": "cpu"})
    plain = rt.lr_find(config)  # on the CPU the data counts as on the device
    decided: list[Speed] = []
    real = rt.decide

    def host_decide(*args: Any, **kwargs: Any) -> Speed:
        speed = replace(real(*args, **kwargs), data_on_device=False)
        decided.append(speed)
        return speed

    pinned: list[tuple[int, ...]] = []

    def page_locked(shape: Any, dtype: torch.dtype) -> torch.Tensor:
        pinned.append(tuple(shape))
        return torch.empty(tuple(shape), dtype=dtype)

    monkeypatch.setattr(rt, "decide", host_decide)
    monkeypatch.setattr(speed_module, "page_locked", page_locked)
    on_host = rt.lr_find(config)
    assert decided[0].amp_dtype == torch.bfloat16  # trained under the run's autocast
    assert pinned and max(s[0] for s in pinned) == config.data.batch_size  # host batches
    assert on_host.losses == plain.losses and on_host.lrs == plain.lrs  # same batches


def test_the_range_test_gives_its_cuda_cache_back(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.lr import range_test as rt

    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: None)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    rt.lr_find(_cfg(train={"device": "cpu"}))
    assert emptied == [True]


# --- 14: the PEFT adapter written by rank 0 only ----------------------------------------------


@pytest.mark.parametrize(("rank", "saves"), [(0, 1), (1, 0), (None, 1)])
def test_only_rank_0_saves_the_peft_adapter(rank: int | None, saves: int, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed as dist

    saved: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: rank is not None)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    callback = SavePeft(SimpleNamespace(save_pretrained=saved.append))
    callback.on_run_end(SimpleNamespace(run_dir=tmp_path), "ok")  # type: ignore[arg-type]
    assert len(saved) == saves


# --- 15: a zero gradient norm on the run's device ---------------------------------------------


def test_no_gradient_is_a_zero_norm_on_the_runs_device() -> None:
    meta = torch.device("meta")  # stands for CUDA: any device but the CPU
    assert grad_norm([], meta).device == meta
    assert grad_norm([nn.Parameter(torch.zeros(2, device=meta))]).device == meta
    assert clip_grad_norm([nn.Parameter(torch.zeros(2))], 1.0, meta).device == meta
    assert grad_norm([]).device.type == "cpu"
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    assert float(grad_norm([p], meta)) == pytest.approx(18 ** 0.5)  # gradients: their device
    assert float(clip_grad_norm([p], 1.0, meta)) == pytest.approx(18 ** 0.5)


# --- 16: a fraction of a GPU per rank refused at plan time ------------------------------------


def test_fractional_gpus_per_run_with_several_ranks_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab.api import load
    from trainlab.execute.ray import RayExecutor
    from trainlab.plan import make_plan

    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray is even imported
    sweep = {**BASE, "name": "frac", "train": {**BASE["train"], "device": "cpu", "nproc": 2}}
    plan = make_plan(load(sweep), None, check=False)
    with pytest.raises(ConfigError, match=r"--gpus-per-run 0\.5") as info:
        RayExecutor(gpus_per_run=0.5).prepare(plan)
    assert info.value.field == "--gpus-per-run" and "train.nproc=2" in str(info.value)
    for fine in (None, 0.0, 1.0, 2.0):
        RayExecutor(gpus_per_run=fine)._check_fractional(plan)
    single = make_plan(load({**BASE, "name": "frac"}), None, check=False)
    RayExecutor(gpus_per_run=0.5)._check_fractional(single)  # one rank may share a GPU


# --- 17: allocation failures of cuBLAS and cuDNN are oom --------------------------------------


class _Raise(Callback):
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def on_step_end(self, state: RunState) -> None:
        if state.step == 3:
            raise self.exc


@pytest.mark.parametrize("text", [
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
    "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
    "cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUDA error: cudaErrorMemoryAllocation",
    "CUDA out of memory. Tried to allocate 2.00 GiB",
])
def test_library_allocation_failures_are_oom(text: str) -> None:
    outcome = train(_cfg(), callbacks=[_Raise(RuntimeError(text))], sink=NullSink())
    assert outcome.status == "oom" and "data.batch_size=8" in (outcome.error or "")


def test_other_cuda_errors_stay_failed() -> None:
    outcome = train(_cfg(), callbacks=[_Raise(RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED"))],
                    sink=NullSink())
    assert outcome.status == "failed"


# --- 18: an opt-in deterministic mode ----------------------------------------------------------


def test_deterministic_mode_sets_and_restores_the_process_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark,
              cudnn.deterministic)
    monkeypatch.setattr(cudnn, "benchmark", True)
    with deterministic(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert not cudnn.benchmark and cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.deterministic) == (
        before[0], before[2])
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own: kept
    with deterministic(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with deterministic(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


class _Seen(Callback):
    def __init__(self) -> None:
        self.on: list[bool] = []

    def on_step_end(self, state: RunState) -> None:
        self.on.append(torch.are_deterministic_algorithms_enabled())


def test_a_deterministic_run_trains_so_and_keeps_its_id_apart() -> None:
    seen = _Seen()
    config = _cfg(train={"deterministic": True})
    outcome = train(config, callbacks=[seen], sink=NullSink())
    assert outcome.status == "ok" and seen.on and all(seen.on)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    # The default leaves every stored run's id as it was; set, it is another run.
    assert _cfg(train={"deterministic": False}).run_id == _cfg().run_id
    assert config.run_id != _cfg().run_id
