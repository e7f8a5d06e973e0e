"""Two processes with the same global batch take the same steps as one (DDP over gloo on CPU)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A port nothing listens on now (a fixed one can still be held by an earlier run)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_worker(out: Path, processes: int) -> dict:
    if processes == 1:
        command = [sys.executable, "-m", "tests.distributed_worker", str(out)]
    else:
        # on a machine without GPUs, --multi_gpu is what starts N CPU processes (--cpu starts one)
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
            "-m", "tests.distributed_worker", str(out),
        ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-10000:]
    return json.loads((out / "run.json").read_text())


@pytest.mark.skipif(sys.platform == "win32", reason="gloo launch is tested on POSIX")
def test_two_processes_match_one_process(tmp_path):
    single = run_worker(tmp_path / "one", 1)
    double = run_worker(tmp_path / "two", 2)
    assert (single["processes"], double["processes"]) == (1, 2)
    assert double["losses"] == pytest.approx(single["losses"], rel=1e-5)
    one = load_file(str(tmp_path / "one" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter_model.safetensors"))
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-6), name
