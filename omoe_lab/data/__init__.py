"""Tasks, prompts and batching."""
from .example import Example
from .prompts import build_prompt, option_continuations, option_labels, target_text

__all__ = ["Example", "build_prompt", "option_continuations", "option_labels", "target_text"]
