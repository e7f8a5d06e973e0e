"""Tasks, prompts and batching."""
from .collate import IGNORE_INDEX, TrainCollator, encode_example
from .example import Example
from .prompts import build_prompt, option_continuations, option_labels, target_text
from .tasks import TASK_NAMES, TASKS, TaskSpec, get_task, load_task, load_tasks, to_llm_adapters_record

__all__ = [
    "Example", "IGNORE_INDEX", "TASKS", "TASK_NAMES", "TaskSpec", "TrainCollator", "build_prompt",
    "encode_example", "get_task", "load_task", "load_tasks", "option_continuations", "option_labels",
    "target_text", "to_llm_adapters_record",
]
