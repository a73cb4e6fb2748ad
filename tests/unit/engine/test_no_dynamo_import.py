"""The meta-device trace, the FLOP count and the stack's dispatch mode leave ``torch._dynamo``
unimported (about 1 s a process), and leave torch's not-to-compile marks as they were."""

from __future__ import annotations

import subprocess
import sys
import textwrap


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
