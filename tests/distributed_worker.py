"""Run by tests/test_distributed.py under ``accelerate launch`` (two processes) or directly (one)."""
import json
import sys

import torch
from accelerate import Accelerator

from omoe_lab.inject import save_adapters
from omoe_lab.models import byte_tokenizer
from omoe_lab.train import TrainConfig, train
from tests.test_train import fresh_model, toy_examples

out = sys.argv[1]
torch.set_num_threads(1)
accelerator = Accelerator(cpu=True)
model = fresh_model()  # soft routing: top-k near-ties would turn round-off into different routes
result = train(model, byte_tokenizer(), toy_examples(), TrainConfig(steps=4, batch_size=8, lr=5e-3), accelerator=accelerator, progress=False)
if accelerator.is_main_process:
    save_adapters(model, out)
    json.dump({"processes": accelerator.num_processes, "losses": [h["loss"] for h in result.history]}, open(f"{out}/run.json", "w"))
# Leave together and take the process group down before exiting, so no rank exits with gloo
# still running (one clean-clone run saw a rank abort with "terminate called without an active
# exception"; where it aborted is not known).
accelerator.wait_for_everyone()
accelerator.end_training()
