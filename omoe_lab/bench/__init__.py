"""Benchmarks (issue 12): each part in its own module, one command for all (``omoe-lab bench``).

- ``layer``: one adapted linear at the layer target's shapes (OMoE, its float32-Gram variant,
  the naive reference, MoE-LoRA, LoRA);
- ``peers``: PEFT's LoRA and mixlora's MixLoRA block against omoe_lab's, side by side;
- ``scaling``: cost against the number of experts and against tokens, and its figure;
- ``end_to_end``: training steps and scoring on the default model, with and without the
  frozen-prefix cache;
- ``scoring``: the loglik scorer against full-vocabulary logits at every position.

``measure`` holds how everything is timed and counted, ``record`` what a result holds and how it
is written (``benchmarks/results/<part>.json`` and ``<part>.md``), ``cli`` the command.
Benchmarks, never timed tests: ``tests/test_bench.py`` checks only that the output is well formed.
"""
from .cli import PARTS, main

__all__ = ["PARTS", "main"]
