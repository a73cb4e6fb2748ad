"""Built-in example sweeps (YAML files beside this module).

Most run offline on data shipped with trainlab or its extras.  The studies listed in
:data:`STUDIES` are the five studies trainlab was shaped by at their real sizes, with their
real Hugging Face data and models: they need network access and a GPU, and what each needs is
said here (the sweep file itself has no field for it).  Each has tests that run it on local
stand-ins in the hub's formats (tests/integration/test_studies.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    """What a shipped study config needs and how it is run."""

    name: str
    study: str          # the report it reproduces (../shared/seeds)
    needs: str          # extras, network, devices
    gpu_hours: str      # about how long on one A100/H100-class GPU
    commands: tuple[str, ...]
    offline: str        # the offline example that is its small counterpart


_HF = 'trainlab[hf], network (Hugging Face hub)'

STUDIES: dict[str, Study] = {s.name: s for s in (
    Study("glue-finetune", "BERT fine-tuning schemes on SST-2 and CoLA (COMS 6998)",
          f"{_HF}, a GPU", "about 1 (20 runs; SST-2 takes 9 in 10)",
          ("trainlab run --example glue-finetune", "trainlab report --sweep glue-finetune"),
          "finetune"),
    Study("wikitext-lm", "LSTM vs GPT-1 under four optimizers, 1/2/4 layers (12 runs)",
          f"{_HF}, a GPU", "about 1 (12 runs of 10 epochs)",
          ("trainlab run --example wikitext-lm", "trainlab report --sweep wikitext-lm"),
          "lm-optimizers"),
    Study("mlp-labs", "MLPs on Fashion-MNIST and CIFAR-10 with estimates (CS 3450)",
          f"{_HF}, a GPU (runs on CPU too, slowly)", "about 0.5 (20 runs; small batches)",
          ("trainlab estimate --example mlp-labs", "trainlab run --example mlp-labs",
           "trainlab report --sweep mlp-labs --sort run"), "quickstart"),
    Study("mnist-lr-range", "LR range test, then fixed vs StepLR at 4 candidates (CS 5260)",
          f"{_HF}, a GPU (runs on CPU too)", "about 0.2 (2 range tests + 16 runs)",
          ("trainlab lr-find --example mnist-lr-range --emit-grid followup.yaml",
           "trainlab run followup.yaml", "trainlab report --sweep mnist-lr-range-followup"),
          "lr-range"),
    Study("agnews-peft", "GPT-2 on AG News: LoRA vs adapters vs prompt tuning, DDP, W&B (HPML)",
          'trainlab[hf,wandb], network, 2+ GPUs, a W&B login', "about 2 (3 runs x 2 GPUs)",
          ("trainlab run --example agnews-peft --nproc 2 --log wandb",
           "trainlab report --sweep agnews-peft"), "finetune"),
)}

__all__ = ["STUDIES", "Study"]
