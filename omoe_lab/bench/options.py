"""What every part is run with: the device, the repeats, and full or smoke sizes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_REPEATS = 5  # the targets are medians of at least 5


@dataclass(frozen=True)
class Options:
    """``smoke``: tiny shapes (and the tiny random model instead of the default one), for CI and a
    first look; its numbers measure nothing. ``model``: the model of the model-level parts
    (``None``: the default SmolLM2-135M-Instruct, or ``"tiny"`` under smoke)."""

    device: torch.device = torch.device("cpu")
    repeats: int = DEFAULT_REPEATS
    smoke: bool = False
    model: str | None = None
    progress: bool = True

    @property
    def model_name(self) -> str:
        return self.model or ("tiny" if self.smoke else "default")

    def say(self, line: str) -> None:
        """One progress line per measured row (flushed: a long run shows where it is)."""
        if self.progress:
            print(line, flush=True)
