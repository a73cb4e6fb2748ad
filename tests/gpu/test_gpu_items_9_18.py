"""The GPU checks of issue 25, items 9-18: what only a real GPU shows.  The same logic is
pinned down on the CPU with fakes in tests/unit/engine/test_gpu_contact.py.  Every test is
marked ``gpu`` (deselected by default) and skips without CUDA; the file takes under a minute.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.helpers import recorded, train_ok
from trainlab.config.schema import resolve_run
from trainlab.engine.checkpoint import save_atomic
from trainlab.engine.measure import grad_norm

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = torch.device("cuda")
RAW: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64},
    "model": {"name": "mlp", "hidden_dim": 256, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 1e-3},
    "train": {"epochs": 2, "log_every": 5, "device": "cuda", "seed": 4},
}


def _raw(model: dict[str, Any] | None = None, optimizer: dict[str, Any] | None = None,
         **train_: Any) -> dict[str, Any]:
    raw = copy.deepcopy(RAW)
    raw["train"].update(train_)
    if model is not None:
        raw["model"] = model
    if optimizer is not None:
        raw["optimizer"] = optimizer
    return raw




def test_9_checkpoint_holds_one_cuda_rng_state_and_older_lists_resume(tmp_path: Path) -> None:
    train_ok(_raw(epochs=1), run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    state = ckpt["rng"]["cuda"]
    assert isinstance(state, torch.Tensor)  # the run's device's, not a list of every GPU's
    # An older checkpoint: every visible GPU's state, more than this process sees.
    ckpt["rng"]["cuda"] = [state] * (torch.cuda.device_count() + 3)
    save_atomic(ckpt, tmp_path / "last.pt")
    train_ok(_raw(epochs=2), run_dir=tmp_path, resume=True)


def test_10_unpadded_hf_input_runs_without_host_sync() -> None:
    transformers = pytest.importorskip("transformers")
    from trainlab.components.nets import HFModel

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=64,
                                     num_labels=2, pad_token_id=0)
    net = HFModel(transformers.BertForSequenceClassification(config), "sequence-classification",
                  0, "here").to(CUDA).eval()
    x = torch.randint(1, 64, (8, 16), device=CUDA)
    net(x)  # warm-up (lazy initialisation may sync once)

    def syncs() -> int:
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with torch.no_grad():
                    net(x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)

    net.padded = True
    masked = syncs()
    net.padded = False  # what note_padding decides for data with no pad token
    assert syncs() == 0, f"no mask still syncs (with a mask: {masked} syncs)"


def test_11_fp16_rmsprop_notes_the_scaler_sync() -> None:
    outcome, _ = train_ok(_raw(epochs=1, precision="fp16",
                           optimizer={"name": "rmsprop", "lr": 1e-3}))
    assert any(".item()" in n for n in outcome.summary.get("notes", []))
    outcome, _ = train_ok(_raw(epochs=1, precision="fp16"))  # Adam: fused on CUDA, no sync
    assert not any(".item()" in n for n in outcome.summary.get("notes", []))


def test_12_host_data_pins_batches_and_trains_as_on_device() -> None:
    _, on = train_ok(_raw(data_on_device=True))
    _, host = train_ok(_raw(data_on_device=False))
    assert recorded(host, "valid/loss") == recorded(on, "valid/loss")


def test_13_range_test_follows_placement_and_frees_its_cache() -> None:
    from trainlab.lr.range_test import lr_find

    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()
    result = lr_find(resolve_run({**_raw(data_on_device=False, precision="fp16"),
                                  "lr_find": {"steps": 20}}))
    assert result.device.startswith("cuda") and len(result.lrs) > 0
    assert torch.cuda.memory_reserved() <= before + 2 * 2**20  # the cache given back


def test_15_zero_norm_is_on_the_gpu() -> None:
    frozen = torch.nn.Parameter(torch.zeros(3, device=CUDA))
    norm = grad_norm([frozen], CUDA)
    assert norm.device.type == "cuda"
    torch.stack([norm, torch.ones((), device=CUDA)])  # joins the step's CUDA values


def test_18_deterministic_runs_are_bit_identical() -> None:
    raw = _raw(model={"name": "cnn"}, epochs=1, deterministic=True)
    _, a = train_ok(raw)
    _, b = train_ok(raw)
    assert recorded(a, "train/loss") == recorded(b, "train/loss")
    assert recorded(a, "valid/loss") == recorded(b, "valid/loss")
    assert not torch.are_deterministic_algorithms_enabled()  # restored

