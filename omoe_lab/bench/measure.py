"""How every part measures: median wall time, exact saved-for-backward bytes, the CUDA peak.

Time is the median of ``repeats`` calls after one untimed warm-up (the first call pays for lazy
initialization and allocator growth). On CUDA every timed call is bracketed by
``torch.cuda.synchronize`` so the clock sees the kernels, not only their launch.

Memory is counted exactly and the same on every device: the bytes of every storage an operation
created during the forward that is still alive once it returns — what autograd (or a
``torch.utils.checkpoint``, whose inputs a ``saved_tensors_hooks`` pack hook never sees) keeps for
the backward pass. A storage counts once however many tensors view it; parameters and buffers
(frozen weights included) are not activations and are excluded by storage, so a saved ``W.T`` of a
frozen linear costs 0; the forward's output is excluded too.
"""
from __future__ import annotations

import gc
import statistics
import time
import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MiB = 2**20


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``call()``, after ``warmup`` untimed ones."""
    return time_side_by_side({"call": call}, repeats, device, warmup)["call"]


def time_side_by_side(calls: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                      warmup: int = 1) -> dict[str, list[float]]:
    """``time_calls`` of several calls, interleaved: each repeat runs every call once, in turn.

    A ratio of two of them then compares calls made seconds apart, not minutes: a machine whose
    speed drifts (a shared 2-core VM moves by ±20 % between runs) moves both alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for call in calls.values():
        for _ in range(warmup):
            call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def backward_step(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor,
                  params: Iterable[torch.Tensor]) -> Callable[[], None]:
    """One training-like call: gradients of ``x`` and ``params`` reset, then ``forward(x)`` and its
    backward with the output gradient ``grad`` (the input requires grad, as inside a network)."""
    params = list(params)

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        forward(x).backward(grad)

    return step


def timing_fields(seconds: list[float]) -> dict:
    """``ms`` (the median) and every repeat's ``times_ms``, as a row stores them."""
    return {"ms": 1000 * statistics.median(seconds), "times_ms": [1000 * s for s in seconds]}


def _storage_key(tensor: torch.Tensor) -> tuple[str, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensors without a storage (e.g. some wrapper subclasses)
        return None
    return (str(tensor.device), storage.data_ptr())


class _CreatedStorages(TorchDispatchMode):
    """Weak references to every storage an operation allocates (not the views it returns of its
    inputs' storages: a reshaped input is the caller's memory, not the forward's)."""

    def __init__(self):
        super().__init__()
        self.created: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and (key := _storage_key(tensor)) is not None and key not in inputs:
                self.created.append(weakref.ref(tensor.untyped_storage()))
        return out


def saved_activation_bytes(forward: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes kept alive for backward once ``forward()`` returns: storages its operations created
    that are still referenced (each once), minus the output's and the ``exclude``'d tensors' (e.g.
    the model's parameters and buffers).

    The graph ``forward`` builds is dropped afterwards without a backward.
    """
    excluded = {key for t in exclude if (key := _storage_key(t)) is not None}
    recorder = _CreatedStorages()
    with recorder:
        out = forward()
    excluded |= {key for t in tree_leaves(out) if isinstance(t, torch.Tensor) and (key := _storage_key(t)) is not None}
    gc.collect()  # a storage only a reference cycle holds is not kept for backward
    alive = {}
    for ref in recorder.created:
        storage = ref()
        if storage is not None:
            alive[(str(storage.device), storage.data_ptr())] = storage.nbytes()
    del out
    return sum(n for key, n in alive.items() if key not in excluded)


def module_tensors(*modules: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of ``modules``: what ``saved_activation_bytes`` should exclude."""
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def cuda_peak_mib(call: Callable[[], object], device: torch.device) -> float | None:
    """Peak allocated CUDA memory (MiB, weights included) while ``call()`` runs; None off CUDA."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) / MiB
