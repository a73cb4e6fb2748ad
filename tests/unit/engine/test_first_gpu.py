"""Issue 25 ("First contact with a GPU"), items 1-7, pinned down on the CPU with fakes of the
CUDA and NVML calls; tests/gpu/test_gpu_suite.py checks the same behaviour on a real GPU."""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import pytest
import torch

from trainlab.components import load_dataset
from trainlab.config.schema import resolve_run
from trainlab.engine import bench as bench_module
from trainlab.engine import flops, loop, measure, sampler, speed, threads, train
from trainlab.records import NullSink

RAW: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 32, "limit": 256},
    "model": {"name": "mlp", "hidden_dim": 16},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 1, "log_every": 4, "device": "cpu"},
}
CUDA = torch.device("cuda", 0)
UUID = "5b2c8d1e-0000-1111-2222-333344445555"


# --- 1. the NVML handle by UUID or PCI bus id, never by CUDA index ------------------------------


def _fake_nvml(monkeypatch: pytest.MonkeyPatch, *, uuid_fails: bool = False) -> list[tuple]:
    calls: list[tuple] = []

    def by(kind: str, fails: bool = False) -> Any:
        def lookup(value: Any) -> str:
            calls.append((kind, value))
            if fails:
                raise RuntimeError("NVML_ERROR_NOT_FOUND")
            return f"handle-{kind}"
        return lookup

    nvml = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetHandleByIndex=by("index"),
        nvmlDeviceGetHandleByUUID=by("uuid", uuid_fails),
        nvmlDeviceGetHandleByPciBusId=by("pci"),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=1 << 20))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return calls


def _fake_props(monkeypatch: pytest.MonkeyPatch, **props: Any) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(**props))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_nvml_handle_is_looked_up_by_uuid(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_nvml(monkeypatch)
    _fake_props(monkeypatch, uuid=UUID, pci_bus_id=0x3B, pci_domain_id=0, pci_device_id=0)
    found = sampler.nvml_sampler(CUDA, 0.5)
    assert found is not None
    assert calls == [("uuid", f"GPU-{UUID}")]  # never ("index", 0)
    assert found.read() == (50.0, float(1 << 20))


def test_nvml_handle_falls_back_to_the_pci_bus_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_nvml(monkeypatch, uuid_fails=True)
    _fake_props(monkeypatch, uuid=UUID, pci_bus_id=0x3B, pci_domain_id=0, pci_device_id=0)
    assert sampler.nvml_sampler(CUDA, 0.5) is not None
    assert calls == [("uuid", f"GPU-{UUID}"), ("pci", "00000000:3B:00.0")]


def test_no_device_id_means_no_sampler_not_another_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_nvml(monkeypatch)
    _fake_props(monkeypatch)
    assert sampler.nvml_sampler(CUDA, 0.5) is None
    assert all(kind != "index" for kind, _ in calls)


# --- 2. the eval_every pause starts and ends on the synced clock ---------------------------------


def test_the_eval_pause_is_timed_by_the_synced_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_now, real_validate = measure.Clock.now, loop._Trainer._validate

    def now(self: Any) -> float:
        events.append("clock")
        return real_now(self)

    def validate(self: Any) -> None:
        events.append("validate")
        real_validate(self)
        events.append("validated")

    real_time = loop.time

    class Time:  # the loop's bare host clock, recorded
        def __getattr__(self, name: str) -> Any:
            return getattr(real_time, name)

        @staticmethod
        def perf_counter() -> float:
            events.append("host")
            return real_time.perf_counter()

    monkeypatch.setattr(measure.Clock, "now", now)
    monkeypatch.setattr(loop._Trainer, "_validate", validate)
    monkeypatch.setattr(loop, "time", Time())
    raw = {**RAW, "train": {**RAW["train"], "eval_every": 3}}
    outcome = train(resolve_run(raw), sink=NullSink())
    assert outcome.status == "ok", outcome.error
    pauses = [i for i, e in enumerate(events) if e == "validate"]
    assert len(pauses) >= 2
    for i in pauses[:-1]:  # the last validation is the epoch end's, outside the timed epoch
        assert events[i - 1] == "clock"  # a sync waits for queued training kernels first
        end = events.index("validated", i)
        assert events[end + 1] == "clock"


# --- 3. the GPU peak: CUDA events over a fixed count, under the run's TF32 flags ------------------


class _FakeEvent:
    log: ClassVar[list[str]] = []

    def __init__(self, enable_timing: bool = False) -> None:
        assert enable_timing

    def record(self) -> None:
        self.log.append("record")

    def synchronize(self) -> None:
        self.log.append("sync")

    def elapsed_time(self, end: _FakeEvent) -> float:
        return 4.0  # ms for the round


def test_cuda_peak_is_timed_by_events_over_a_fixed_count(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    _FakeEvent.log = []
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    real_mm = torch.mm

    def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        _FakeEvent.log.append("mm")
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", mm)
    n = 8
    a = torch.ones(n, n)
    rate = flops._cuda_rate(a, a, n, rounds=3)
    products = flops.CUDA_PRODUCTS
    one_round = ["record"] + ["mm"] * products + ["record", "sync"]
    assert _FakeEvent.log == one_round * 3  # no host clock, no stop on elapsed host time
    assert rate == pytest.approx(products * 2 * n**3 / 4e-3)


def test_fp32_peak_is_measured_and_kept_under_the_tf32_flag(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setattr(flops, "_PEAKS", {})
    modes: list[str] = []
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "highest")
    monkeypatch.setattr(torch, "set_float32_matmul_precision", modes.append)
    monkeypatch.setattr(flops, "tf32_flags", lambda: {"matmul": False, "cudnn": True})

    def fake(device: torch.device, dtype: torch.dtype, seconds: float) -> float:
        return 8e12 if modes[-1] == "high" else 1e12

    assert flops.measure_peak_flops(CUDA, sample=fake, tf32=True) == 8e12
    assert modes == ["high", "highest"]  # set for the measurement, restored after
    assert flops.measure_peak_flops(CUDA, sample=fake, tf32=False) == 1e12  # its own key
    assert flops.measure_peak_flops(CUDA, sample=fake) == 1e12  # default: the matmul flag


def test_a_cnn_in_fp32_uses_tf32_under_the_cudnn_flag() -> None:
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    off = {"matmul": False, "cudnn": True}
    assert not flops.run_uses_tf32(mlp, off) and flops.run_uses_tf32(cnn, off)
    assert not flops.run_uses_tf32(cnn, {"matmul": False, "cudnn": False})
    assert flops.run_uses_tf32(mlp, {"matmul": True, "cudnn": False})


# --- 4. the CUDA cache freed before the placement, before the peak reset, after an OOM -----------


@pytest.fixture
def cache_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    import gc

    real_collect = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append("collect") or real_collect())
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    return calls


def test_peak_reset_follows_an_emptied_cache(monkeypatch: pytest.MonkeyPatch,
                                              cache_calls: list[str]) -> None:
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                        lambda d=None: cache_calls.append("reset"))
    measure.PeakMemory(CUDA).reset()
    assert cache_calls == ["collect", "empty_cache", "reset"]


def test_placement_reads_free_memory_after_an_emptied_cache(monkeypatch: pytest.MonkeyPatch,
                                                            cache_calls: list[str]) -> None:
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        cache_calls.append("mem_get_info")
        return (1 << 30, 1 << 31)

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    data = load_dataset(resolve_run(RAW).data, resolve_run(RAW).model)
    assert speed._fits_on_device([data.train, data.valid, data.test], CUDA)
    assert cache_calls == ["collect", "empty_cache", "mem_get_info"]


def test_an_oom_gives_the_cache_back(monkeypatch: pytest.MonkeyPatch,
                                     cache_calls: list[str]) -> None:
    def fit(self: Any) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loop._Trainer, "_fit", fit)
    outcome = train(resolve_run(RAW), sink=NullSink())
    assert outcome.status == "oom"
    assert "empty_cache" in cache_calls


# --- 6. bf16 on a GPU without native support --------------------------------------------------


@pytest.mark.parametrize("native", [True, False])
def test_emulated_bf16_on_a_gpu_is_warned_about(native: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native or including_emulation  # a T4: emulated, counted unless told not to

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda i=None: (8, 0) if native else (7, 5))
    why = flops.slow_precision(CUDA, "bf16")
    assert asked == [False]
    if native:
        assert why is None
    else:
        assert why is not None and "Tesla T4" in why and "7.5" in why and "fp16" in why
    assert flops.slow_precision(CUDA, "fp16") is None and flops.slow_precision(CUDA, "fp32") is None


# --- 7. estimates: all splits placed, no sync per step, nproc in the setup key -----------------


def test_setup_key_tells_ddp_runs_apart() -> None:
    one = resolve_run(RAW)
    two = resolve_run({**RAW, "train": {**RAW["train"], "nproc": 2}})
    assert threads.setup_key(one) != threads.setup_key(two)


def test_the_estimate_probes_a_ddp_run_as_one_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainlab import estimate

    seen: list[int] = []

    def measure_setup(config: Any, device: Any, calibrate: bool) -> Any:
        seen.append(config.data.batch_size)
        raise RuntimeError("stop here")

    monkeypatch.setattr(estimate, "_measure_setup", measure_setup)
    for nproc in (1, 2):
        with pytest.raises(RuntimeError, match="stop here"):
            estimate.estimate_run(resolve_run({**RAW, "train": {**RAW["train"], "nproc": nproc}}))
    assert seen == [32, 16]


def test_the_bench_places_data_by_all_three_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real = bench_module.decide

    def decide(train_spec: Any, model: Any, device: Any, splits: Any, **kw: Any) -> Any:
        seen.append(len(splits))
        return real(train_spec, model, device, splits, **kw)

    monkeypatch.setattr(bench_module, "decide", decide)
    config = resolve_run(RAW)
    bench_module.Bench(config, torch.device("cpu"), load_dataset(config.data, config.model))
    assert seen == [3]


def test_bench_steps_sync_only_at_the_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    syncs: list[Any] = []
    monkeypatch.setattr(bench_module, "synchronize", syncs.append)
    config = resolve_run(RAW)
    bench = bench_module.Bench(config, torch.device("cpu"),
                               load_dataset(config.data, config.model))
    steps: list[int] = []
    real_step = bench.optimizer.step
    monkeypatch.setattr(bench.optimizer, "step", lambda *a, **k: steps.append(1) or real_step())
    assert bench.steps(5) > 0
    assert len(steps) == 5 and len(syncs) == 2
