"""One multiple-choice example, the unit every loader produces and every scorer consumes."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """A question with its options; ``label`` indexes the correct option.

    ``record`` keeps the original JSON record (LLM-Adapters layout or Hub row) for provenance.
    """

    task: str
    question: str
    options: tuple[str, ...]
    label: int
    record: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if len(self.options) < 2:
            raise ValueError(f"{self.task}: an example needs at least 2 options, got {len(self.options)}")
        if not 0 <= self.label < len(self.options):
            raise ValueError(
                f"{self.task}: label {self.label} is outside the {len(self.options)} options {list(self.options)}"
            )
