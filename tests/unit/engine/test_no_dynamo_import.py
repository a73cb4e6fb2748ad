"""The meta-device trace, the FLOP count and the stack's dispatch mode leave ``torch._dynamo``
unimported (about 1 s a process), and leave torch's not-to-compile marks as they were."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_trace_and_flops_do_not_import_dynamo_and_leave_no_marks() -> None:
    out = _python("""
        import sys
        import torch
        from torch.optim import Optimizer
        from trainlab.config import resolve_run
        from trainlab.components import load_dataset
        from trainlab.engine.flops import train_step_flops
        from trainlab.estimate.memory import trace

        config = resolve_run({"data": {"name": "digits", "batch_size": 32},
                              "model": {"name": "mlp", "hidden_dim": 64}})
        info = load_dataset(config.data).info
        traced = trace(config.model, config.finetune, info, 32)
        flops = train_step_flops(config.model, info, 32)
        assert traced is not None and traced["activations"] > 0 and traced["peak"] > 0
        assert flops is not None and flops > 0
        print("dynamo imported:", "torch._dynamo" in sys.modules)
        print("stand-in left on torch:", "_dynamo" in torch.__dict__)
        raw = Optimizer.add_param_group.__wrapped__
        print("mark left:", hasattr(raw, "__dynamo_disable"))
        # Torch's own path still works afterwards: stepping an optimizer imports the real one.
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], lr=0.1)
        p.sum().backward()
        opt.step()
        print("real after step:", hasattr(sys.modules["torch._dynamo"], "optimize"))
    """)
    assert "dynamo imported: False" in out
    assert "stand-in left on torch: False" in out
    assert "mark left: False" in out
    assert "real after step: True" in out


def test_a_stand_in_asked_for_more_than_disable_gives_the_real_module() -> None:
    out = _python("""
        import sys
        import torch
        from trainlab.components.optimizers import no_dynamo_import

        with no_dynamo_import():
            import torch._dynamo
            print("inside is compiling:", torch._dynamo.is_compiling())
        print("real:", hasattr(sys.modules["torch._dynamo"], "optimize"))
    """)
    assert "inside is compiling: False" in out
    assert "real: True" in out


def _trainlab_run(config: Path, store: Path, first: str = "") -> str:
    """``trainlab run config`` in a fresh process (``first`` run before it); its output says
    whether the real ``torch._dynamo`` was imported."""
    return _python(f"""
        import sys
        {first}
        sys.argv = ["trainlab", "run", {str(config)!r}, "--store", {str(store)!r}, "--quiet"]
        from trainlab.cli import main
        try:
            main()
        except SystemExit as exc:
            assert not exc.code, exc.code
        module = sys.modules.get("torch._dynamo")
        print("real dynamo:", module is not None and "optimize" in vars(module))
    """)


def test_trainlab_run_trains_without_dynamo_and_the_same_weights(tmp_path: Path) -> None:
    """A whole ``trainlab run`` (estimate included) never imports the real ``torch._dynamo``,
    and trains exactly the weights a process that imported it trains."""
    config = tmp_path / "tiny.yaml"
    config.write_text("name: tiny\ndata: {name: digits, batch_size: 32}\n"
                      "model: {name: mlp, hidden_dim: 32}\n"
                      "optimizer: {name: adam, lr: 0.01}\ntrain: {epochs: 2}\n")
    out = _trainlab_run(config, tmp_path / "a")
    assert "real dynamo: False" in out
    out = _trainlab_run(config, tmp_path / "b", first="import torch._dynamo")
    assert "real dynamo: True" in out  # the real one, imported before anything ran
    import torch

    a = sorted((tmp_path / "a").rglob("last.pt"))
    b = sorted((tmp_path / "b").rglob("last.pt"))
    assert len(a) == len(b) == 1
    wa = torch.load(a[0], weights_only=False)["model"]
    wb = torch.load(b[0], weights_only=False)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compile_inside_the_block_gets_the_real_module() -> None:
    out = _python("""
        import sys
        import torch
        from trainlab.components.optimizers import no_dynamo_import

        with no_dynamo_import():
            p = torch.nn.Parameter(torch.ones(3))
            opt = torch.optim.SGD([p], lr=0.5)
            (p * 2).sum().backward()
            opt.step()
            opt.zero_grad()
            print("after a step:", "optimize" in vars(sys.modules["torch._dynamo"]))
            import torch._dynamo.utils  # a submodule: the real package is imported for it
            print("submodule:", "optimize" in vars(sys.modules["torch._dynamo"]))
        print("value:", p.detach().tolist())
    """)
    assert "after a step: False" in out
    assert "submodule: True" in out
    assert "value: [0.0, 0.0, 0.0]" in out
