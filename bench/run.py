"""One benchmark runner: every backend of this library and the peers a user would pick instead, on the same shapes.

GPT-2 124M shape (12 layers, 12 heads, 768 wide, vocabulary 50257), random weights, prompt of `--prompt` tokens,
`--new` new tokens, greedy, end-of-text disabled so every call makes exactly `--new` tokens:

* `decode_b1`, `decode_b8`: cached greedy decoding, tokens/s (batch x new tokens over the time of a whole `generate`
  call, prompt processing included);
* `beam4_b1`: beam search, `num_beams=4`, batch 1, tokens/s of the returned sequence (new tokens over the call);
* `forward_1x1024`: one forward pass over 1 x `--forward` tokens without a cache, seconds.

Each contender runs in its own subprocess (fresh interpreter, nothing shared), and the contenders take turns:
round 1 runs A B C ..., round 2 runs A B C ... again, so load from other jobs hits every contender alike. Inside a
worker each measurement gets one untimed warm-up call (tracing, XLA / torch.compile compilation) and `--repeats`
timed calls (median); across rounds the median is reported, with the speedup over transformers eager (higher is
better for every column: rates divided, times inverted). A peer that is not installed is recorded as such, a
measurement that fails is recorded with its error; the runner itself does not stop.

    pip install -e ".[all,dev,bench]"
    python bench/run.py                                   # CPU: bench/results/run_cpu.json + docs/performance.md
    python bench/run.py --device cuda                     # same table on a GPU (auto-detected by default)
    python bench/run.py --contenders gpt2_torch,transformers_eager --rounds 5
    python bench/run.py --quick --output /tmp/q.json --docs /tmp/q.md      # tiny model, 1 round: a smoke test

`python bench/run.py --list` prints the contenders.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOCS = REPO / "docs" / "performance.md"
BASELINE = "transformers_eager"
MEASUREMENTS = ("decode_b1", "decode_b8", "beam4_b1", "forward_1x1024")
HEADERS = {
    "decode_b1": "decode b=1 tok/s",
    "decode_b8": "decode b=8 tok/s",
    "beam4_b1": "beam 4, b=1 tok/s",
    "forward_1x1024": "forward 1x{forward} s",
}
GPT2_124M = {"vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12}
QUICK = {"vocab_size": 50257, "n_positions": 128, "n_embd": 32, "n_layer": 1, "n_head": 2}
VERSIONED = ("numpy", "torch", "tensorflow", "tensorflow-cpu", "keras", "jax", "jaxlib", "flax", "transformers",
             "keras-hub", "ctranslate2")


class NotInstalled(Exception):
    """The peer's package cannot be imported: recorded as "not installed"."""


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise NotInstalled(f"{module}: {error}") from error


@dataclass(frozen=True)
class Spec:
    config: dict
    prompt: int
    new: int
    forward: int
    repeats: int
    device: str
    num_beams: int = 4
    measurements: tuple[str, ...] = MEASUREMENTS
    threads: int = 0  # CPU threads per worker; 0: the frameworks' defaults (all cores)

    def prompts(self, batch: int, length: int | None = None):
        import numpy as np

        length = self.prompt if length is None else length
        return np.random.default_rng(0).integers(0, self.config["vocab_size"], (batch, length)).astype(np.int32)


# --- contenders: each builds its model and returns {measurement: one blocking call} -------------------------------
# A call checks its output shape, so a contender that stops early (end-of-text) cannot look fast.


def _sequences(result: Any) -> Any:
    return getattr(result, "sequences", result)


def _check(result: Any, rows: int, columns: int) -> None:
    shape = tuple(_sequences(result).shape)
    if shape != (rows, columns):
        raise RuntimeError(f"expected {rows} x {columns} tokens, got {shape}")


def _torch_device(spec: Spec):
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no GPU")
    return torch.device(spec.device)


def _torch_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def gpt2_torch(spec: Spec, dtype: str = "float32", attn: str = "sdpa", compiled: bool = False,
               quantize: str | None = None) -> dict[str, Callable[[], None]]:
    import torch

    from gpt2_core import GPT2Config
    from gpt2_torch import GPT2LMHeadModel

    torch.backends.cuda.matmul.allow_tf32 = False
    device = _torch_device(spec)
    model = GPT2LMHeadModel.from_config(GPT2Config(**spec.config), seed=0).eval()
    model.set_attn_implementation(attn)
    model = model.to(device=device, dtype=getattr(torch, dtype))
    if quantize:
        from gpt2_torch.quantize import quantize_model

        model = quantize_model(model, quantize)
    kwargs: dict[str, Any] = {"eos_token_id": []}
    if compiled:  # transformers' switch; _compile_all_devices: compile on the CPU too
        kwargs.update(cache_implementation="static", compile_config={"_compile_all_devices": True})
    calls = _torch_calls(spec, model, device, beams=not compiled, **kwargs)
    if compiled:
        del calls["forward_1x1024"]  # the same uncompiled forward as gpt2_torch
    return calls


def gpt2_torch_bf16(spec: Spec) -> dict[str, Callable[[], None]]:
    return gpt2_torch(spec, "bfloat16")


def gpt2_torch_eager(spec: Spec) -> dict[str, Callable[[], None]]:
    return gpt2_torch(spec, attn="eager")


def gpt2_torch_compile(spec: Spec) -> dict[str, Callable[[], None]]:
    return gpt2_torch(spec, compiled=True)


def gpt2_torch_int8(spec: Spec) -> dict[str, Callable[[], None]]:
    if spec.device != "cpu":
        raise RuntimeError("gpt2_torch int8 runs on torch's CPU int8 kernels only")
    return gpt2_torch(spec, quantize="int8")


def _setup_tf(spec: Spec):
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    if spec.device == "cuda" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("--device cuda, but TensorFlow sees no GPU")
    return tf


def gpt2_tf(spec: Spec, dtype: str = "float32") -> dict[str, Callable[[], None]]:
    tf = _setup_tf(spec)
    from gpt2_core import GPT2Config
    from gpt2_tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(**spec.config), seed=0, dtype=dtype)

    def decode(batch: int, num_beams: int = 1) -> Callable[[], None]:
        ids = spec.prompts(batch)
        mask = tf.ones_like(ids)

        def call() -> None:
            result = model.generate(ids, attention_mask=mask, max_new_tokens=spec.new, do_sample=False,
                                    num_beams=num_beams, eos_token_id=[])
            _check(result, batch, spec.prompt + spec.new)

        return call

    forward_fn = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
    long_ids = tf.constant(spec.prompts(1, spec.forward))
    return {"decode_b1": decode(1), "decode_b8": decode(8), "beam4_b1": decode(1, spec.num_beams),
            "forward_1x1024": lambda: forward_fn(long_ids).numpy()}


def gpt2_flax(spec: Spec, dtype: str = "float32") -> dict[str, Callable[[], None]]:
    import jax
    import numpy as np
    from flax import nnx

    from gpt2_core import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.weights import cast_params, set_compute_dtype

    if spec.device == "cuda" and jax.default_backend() != "gpu":
        raise RuntimeError(f"--device cuda, but JAX runs on {jax.default_backend()}")
    model = FlaxGPT2LMHeadModel.from_config(GPT2Config(**spec.config), seed=0)
    if dtype != "float32":  # weights and compute in dtype: what from_pretrained(dtype=, param_dtype=) gives
        cast_params(model, dtype)
        set_compute_dtype(model, dtype)

    def decode(batch: int, num_beams: int = 1) -> Callable[[], None]:
        ids = spec.prompts(batch)
        mask = np.ones_like(ids)

        def call() -> None:
            result = model.generate(ids, attention_mask=mask, max_new_tokens=spec.new, do_sample=False,
                                    num_beams=num_beams, eos_token_id=[])
            _sequences(result).block_until_ready()
            _check(result, batch, spec.prompt + spec.new)

        return call

    forward_fn = nnx.jit(lambda m, x: m(x, use_cache=False).logits)
    long_ids = spec.prompts(1, spec.forward)
    return {"decode_b1": decode(1), "decode_b8": decode(8), "beam4_b1": decode(1, spec.num_beams),
            "forward_1x1024": lambda: forward_fn(model, long_ids).block_until_ready()}


def gpt2_tf_bf16(spec: Spec) -> dict[str, Callable[[], None]]:
    return gpt2_tf(spec, "bfloat16")


def gpt2_flax_bf16(spec: Spec) -> dict[str, Callable[[], None]]:
    return gpt2_flax(spec, "bfloat16")


def _hf_model(spec: Spec, attn: str, dtype: str = "float32"):
    transformers = _need("transformers")
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    device = _torch_device(spec)
    torch.manual_seed(0)
    config = transformers.GPT2Config(**spec.config)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.set_attn_implementation(attn)
    model = model.to(device=device, dtype=getattr(torch, dtype))
    # no end-of-text: every call makes exactly spec.new tokens, as ours with eos_token_id=[]
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model, device


def _torch_calls(spec: Spec, model, device, beams: bool = True, **generate_kwargs) -> dict[str, Callable[[], None]]:
    """The measurements of a torch model with transformers' `generate` signature (ours and transformers')."""
    import torch

    def decode(batch: int, num_beams: int = 1) -> Callable[[], None]:
        ids = torch.from_numpy(spec.prompts(batch)).long().to(device)
        mask = torch.ones_like(ids)

        def call() -> None:
            with torch.inference_mode():
                result = model.generate(ids, attention_mask=mask, max_new_tokens=spec.new, do_sample=False,
                                        num_beams=num_beams, **generate_kwargs)
            _torch_sync(device)
            _check(result, batch, spec.prompt + spec.new)

        return call

    long_ids = torch.from_numpy(spec.prompts(1, spec.forward)).long().to(device)

    def forward() -> None:
        with torch.inference_mode():
            model(long_ids, use_cache=False)
        _torch_sync(device)

    calls = {"decode_b1": decode(1), "decode_b8": decode(8), "forward_1x1024": forward}
    if beams:
        calls["beam4_b1"] = decode(1, spec.num_beams)
    return calls


def transformers_eager(spec: Spec) -> dict[str, Callable[[], None]]:
    return _torch_calls(spec, *_hf_model(spec, "eager"))


def transformers_sdpa(spec: Spec) -> dict[str, Callable[[], None]]:
    return _torch_calls(spec, *_hf_model(spec, "sdpa"))


def transformers_sdpa_bf16(spec: Spec) -> dict[str, Callable[[], None]]:
    return _torch_calls(spec, *_hf_model(spec, "sdpa", "bfloat16"))


def transformers_static_compile(spec: Spec) -> dict[str, Callable[[], None]]:
    """transformers' own compiled decoding: `cache_implementation="static"` makes `generate` torch.compile the decode
    step (on CPU only when asked: CompileConfig's `_compile_all_devices`). Decoding only: forward is not compiled."""
    from transformers import CompileConfig

    model, device = _hf_model(spec, "sdpa")
    compile_config = CompileConfig()
    compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
    calls = _torch_calls(spec, model, device, beams=False, cache_implementation="static", compile_config=compile_config)
    del calls["forward_1x1024"]
    return calls


def _keras_hub_lm(spec: Spec, num_beams: int = 1):
    keras_hub = _need("keras_hub")
    cfg = spec.config
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=cfg["vocab_size"], num_layers=cfg["n_layer"], num_heads=cfg["n_head"],
        hidden_dim=cfg["n_embd"], intermediate_dim=4 * cfg["n_embd"], max_sequence_length=cfg["n_positions"],
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    # its default sampler is top-k; greedy (or beam search) is what everyone is timed on
    lm.compile(sampler="greedy" if num_beams == 1 else keras_hub.samplers.BeamSampler(num_beams=num_beams))
    return lm


def _keras_hub_decode(spec: Spec, lm, batch: int) -> Callable[[], None]:
    import numpy as np

    # keras-hub generates into the padded tail: prompt first, padding_mask False where tokens are to come.
    total = spec.prompt + spec.new
    token_ids = np.zeros((batch, total), np.int32)
    token_ids[:, : spec.prompt] = spec.prompts(batch)
    padding_mask = np.zeros((batch, total), bool)
    padding_mask[:, : spec.prompt] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}

    def call() -> None:
        result = lm.generate(inputs, stop_token_ids=None)
        _check(np.asarray(result["token_ids"]), batch, total)

    return call


def keras_hub_tf(spec: Spec) -> dict[str, Callable[[], None]]:
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        raise RuntimeError("KERAS_BACKEND must be tensorflow (the runner sets it)")
    tf = _setup_tf(spec)
    lm = _keras_hub_lm(spec)
    long_ids = spec.prompts(1, spec.forward)
    x = {"token_ids": tf.constant(long_ids), "padding_mask": tf.ones_like(long_ids, tf.bool)}
    forward_fn = tf.function(lambda x: lm(x), jit_compile=True)
    return {"decode_b1": _keras_hub_decode(spec, lm, 1), "decode_b8": _keras_hub_decode(spec, lm, 8),
            "beam4_b1": _keras_hub_decode(spec, _keras_hub_lm(spec, spec.num_beams), 1),
            "forward_1x1024": lambda: forward_fn(x).numpy()}


def keras_hub_jax(spec: Spec) -> dict[str, Callable[[], None]]:
    import numpy as np

    if os.environ.get("KERAS_BACKEND") != "jax":
        raise RuntimeError("KERAS_BACKEND must be jax (the runner sets it)")
    lm = _keras_hub_lm(spec)
    long_ids = spec.prompts(1, spec.forward)
    x = {"token_ids": long_ids, "padding_mask": np.ones_like(long_ids, bool)}
    return {"decode_b1": _keras_hub_decode(spec, lm, 1), "decode_b8": _keras_hub_decode(spec, lm, 8),
            "beam4_b1": _keras_hub_decode(spec, _keras_hub_lm(spec, spec.num_beams), 1),
            "forward_1x1024": lambda: lm.predict_on_batch(x)}


def _ctranslate2(spec: Spec, compute_type: str) -> dict[str, Callable[[], None]]:
    """CTranslate2 converts a transformers checkpoint (random weights, the shipped vocabulary as its tokenizer) with
    its own TransformersConverter, then generates from token strings."""
    ctranslate2 = _need("ctranslate2")
    transformers = _need("transformers")
    import torch

    data = REPO / "gpt2_core" / "data"
    tmp = Path(tempfile.mkdtemp(prefix="bench-ct2-"))
    try:
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(transformers.GPT2Config(**spec.config)).save_pretrained(tmp / "hf")
        tokenizer = transformers.GPT2TokenizerFast(str(data / "vocab.json"), str(data / "merges.txt"))
        tokenizer.save_pretrained(tmp / "hf")
        quantization = None if compute_type == "float32" else compute_type
        ctranslate2.converters.TransformersConverter(str(tmp / "hf")).convert(
            str(tmp / "ct2"), quantization=quantization, force=True)
        threads = spec.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        generator = ctranslate2.Generator(str(tmp / "ct2"), device=spec.device, compute_type=compute_type,
                                          intra_threads=threads if spec.device == "cpu" else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def decode(batch: int, beam_size: int = 1) -> Callable[[], None]:
        tokens = [tokenizer.convert_ids_to_tokens(row.tolist()) for row in spec.prompts(batch)]

        def call() -> None:
            # min_length = max_length: no early end-of-text; both count new tokens only (prompt not in the result)
            results = generator.generate_batch(tokens, max_length=spec.new, min_length=spec.new, beam_size=beam_size,
                                               sampling_topk=1, include_prompt_in_result=False)
            lengths = {len(r.sequences_ids[0]) for r in results}
            if len(results) != batch or lengths != {spec.new}:
                raise RuntimeError(f"expected {batch} x {spec.new} new tokens, got {len(results)} x {lengths}")

        return call

    long_ids = spec.prompts(1, spec.forward).tolist()
    return {"decode_b1": decode(1), "decode_b8": decode(8), "beam4_b1": decode(1, spec.num_beams),
            "forward_1x1024": lambda: generator.forward_batch(long_ids)}


def ctranslate2_fp32(spec: Spec) -> dict[str, Callable[[], None]]:
    return _ctranslate2(spec, "float32")


def ctranslate2_int8(spec: Spec) -> dict[str, Callable[[], None]]:
    return _ctranslate2(spec, "int8")


# name -> (builder, label in the table, environment for its subprocess)
CONTENDERS: dict[str, tuple[Callable[[Spec], dict], str, dict]] = {
    "gpt2_torch": (gpt2_torch, "gpt2_torch fp32", {}),
    "gpt2_torch_eager": (gpt2_torch_eager, "gpt2_torch fp32 eager attention", {}),
    "gpt2_torch_compile": (gpt2_torch_compile, "gpt2_torch fp32, static cache + torch.compile", {}),
    "gpt2_torch_bf16": (gpt2_torch_bf16, "gpt2_torch bf16", {}),
    "gpt2_torch_int8": (gpt2_torch_int8, "gpt2_torch int8 weight-only", {}),
    "gpt2_tf": (gpt2_tf, "gpt2_tf fp32 (XLA)", {"KERAS_BACKEND": "tensorflow"}),
    "gpt2_flax": (gpt2_flax, "gpt2_flax fp32 (jit)", {}),
    "gpt2_tf_bf16": (gpt2_tf_bf16, "gpt2_tf bf16 (XLA)", {"KERAS_BACKEND": "tensorflow"}),
    "gpt2_flax_bf16": (gpt2_flax_bf16, "gpt2_flax bf16 (jit)", {}),
    "transformers_eager": (transformers_eager, "transformers fp32 eager", {}),
    "transformers_sdpa": (transformers_sdpa, "transformers fp32 sdpa", {}),
    "transformers_sdpa_bf16": (transformers_sdpa_bf16, "transformers bf16 sdpa", {}),
    "transformers_static_compile": (transformers_static_compile, "transformers static cache + torch.compile", {}),
    "keras_hub_tf": (keras_hub_tf, "keras-hub fp32, TF backend (XLA)", {"KERAS_BACKEND": "tensorflow"}),
    "keras_hub_jax": (keras_hub_jax, "keras-hub fp32, JAX backend", {"KERAS_BACKEND": "jax"}),
    "ctranslate2_fp32": (ctranslate2_fp32, "CTranslate2 fp32", {}),
    "ctranslate2_int8": (ctranslate2_int8, "CTranslate2 int8", {}),
}


# --- the worker: one contender, one process -----------------------------------------------------------------------


def _time(call: Callable[[], None], repeats: int) -> tuple[float, float]:
    """(warm-up seconds, median of `repeats` timed calls)."""
    start = time.perf_counter()
    call()
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return warmup, statistics.median(times)


def _error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def run_worker(name: str, spec: Spec) -> dict:
    builder = CONTENDERS[name][0]
    start = time.perf_counter()
    try:
        calls = builder(spec)
    except NotInstalled as error:
        return {"status": "not installed", "error": str(error)[:300]}
    except Exception as error:  # noqa: BLE001 - recorded in the table, the runner goes on
        return {"status": "failed", "error": _error(error)}
    out: dict[str, Any] = {"status": "ok", "setup_s": time.perf_counter() - start, "values": {}, "warmup_s": {},
                           "errors": {}}
    for measurement in MEASUREMENTS:
        if measurement not in calls or measurement not in spec.measurements:
            continue
        try:
            warmup, seconds = _time(calls[measurement], spec.repeats)
        except Exception as error:  # noqa: BLE001
            out["errors"][measurement] = _error(error)
            continue
        if measurement == "forward_1x1024":
            out["values"][measurement] = seconds
        else:
            batch = 8 if measurement == "decode_b8" else 1
            out["values"][measurement] = batch * spec.new / seconds
        out["warmup_s"][measurement] = warmup
    return out


# --- the parent: rounds, medians, ratios, JSON, markdown ----------------------------------------------------------


def detect_device() -> str:
    """cuda when an NVIDIA GPU answers nvidia-smi, else cpu (no framework imported here)."""
    if shutil.which("nvidia-smi"):
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
        if proc.returncode == 0 and "GPU" in proc.stdout:
            return "cuda"
    return "cpu"


def machine(device: str) -> dict:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
        info["cpu_features"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8")
                                if f in flags.split()]
    except OSError:
        pass
    info["cpu"] = cpu
    info["cpu_count"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        info["cores_usable"] = len(os.sched_getaffinity(0))
    try:
        total = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        proc = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True)
        info["gpu"] = proc.stdout.strip()
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def _spawn(name: str, spec: Spec, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **CONTENDERS[name][2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    if spec.device == "cpu":  # the frameworks would pick a GPU up by themselves
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    if spec.threads:  # torch (OpenMP), TF, XLA CPU (JAX), CTranslate2 (intra_threads, in its builder)
        n = str(spec.threads)
        env.update(OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, TF_NUM_INTRAOP_THREADS=n, TF_NUM_INTEROP_THREADS="1")
        xla = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" if spec.threads == 1 else ""
        env["XLA_FLAGS"] = " ".join(p for p in (os.environ.get("XLA_FLAGS", ""), xla) if p)
    cmd = [sys.executable, __file__, "--worker", name, "--spec", json.dumps(spec.__dict__)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"status": "failed", "error": f"exit {proc.returncode}: {tail[0][:300]}"}
    return json.loads(lines[-1][len("RESULT "):])


def summarize(names: list[str], runs: dict[str, list[dict]], baseline: str = BASELINE) -> dict[str, dict]:
    """Per contender: status, median over rounds of each measurement, its per-round values, speedup over the
    baseline (rates: contender / baseline; seconds: baseline / contender)."""
    summary: dict[str, dict] = {}
    for name in names:
        ok = [run for run in runs[name] if run["status"] == "ok"]
        entry: dict[str, Any] = {"label": CONTENDERS[name][1]}
        if not runs[name]:
            entry["status"], entry["error"] = "not run", ""
        elif not ok:
            entry["status"] = runs[name][-1]["status"]
            entry["error"] = runs[name][-1].get("error", "")
        else:
            entry["status"] = "ok"
            entry["rounds"] = {m: [run["values"][m] for run in ok if m in run["values"]] for m in MEASUREMENTS}
            entry["median"] = {m: statistics.median(v) for m, v in entry["rounds"].items() if v}
            entry["errors"] = {m: e for run in ok for m, e in run["errors"].items() if m not in entry["median"]}
            entry["warmup_s"] = ok[-1]["warmup_s"]
        summary[name] = entry
    base = summary.get(baseline, {}).get("median", {})
    for entry in summary.values():
        if entry["status"] == "ok":
            entry["speedup"] = {
                m: (base[m] / value if m == "forward_1x1024" else value / base[m])
                for m, value in entry["median"].items() if m in base
            }
    return summary


def markdown(report: dict) -> str:
    setup, info = report["setup"], report["machine"]
    columns = [HEADERS[m].format(forward=setup["forward_tokens"]) for m in MEASUREMENTS]
    lines = ["| contender | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for entry in report["contenders"].values():
        if entry["status"] != "ok":
            status = entry["status"] if entry["status"] in ("not installed", "not run") else f"failed: {entry['error']}"
            status = status.replace("|", "/")
            lines.append(f"| {entry['label']} | {status} |" + " |" * (len(columns) - 1))
            continue
        cells = []
        for m in MEASUREMENTS:
            if m in entry["median"]:
                value = entry["median"][m]
                ratio = entry.get("speedup", {}).get(m)
                cells.append(f"{value:.3g}" + (f" ({ratio:.2f}x)" if ratio is not None else ""))
            elif m in entry["errors"]:
                cells.append("failed")
            else:
                cells.append("-")
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    cores = info.get("cores_usable", info["cpu_count"])
    where = f"GPU {info['gpu']}" if info.get("gpu") else "CPU only"
    features = ", ".join(info.get("cpu_features", [])) or "none of avx2/avx512/amx"
    failed = [f"{e['label']}: {m}: {err}" for e in report["contenders"].values() if e["status"] == "ok"
              for m, err in e["errors"].items()]
    partial = [] if setup.get("complete", True) else ["**Partial run**: stopped before every contender ran.", ""]
    text = [
        *partial,
        f"Device `{setup['device']}`: {where}. CPU {info['cpu']} ({info['cpu_count']} CPUs, {cores} usable, "
        f"{features}), {info.get('memory_gib', '?')} GiB, {info['platform']}, Python {info['python']}. "
        f"Load average {setup['load_before']} before, {setup['load_after']} after.",
        "",
        f"{setup['model']}; prompt {setup['prompt_tokens']}, {setup['new_tokens']} new tokens, greedy (beam: "
        f"num_beams={setup['num_beams']}); {setup['rounds']} interleaved rounds x median of {setup['repeats']}, "
        f"threads per worker: {setup.get('threads', 'all')}"
        + (f" ({setup['jobs']} workers at once: not comparable timings)" if setup.get("jobs", 1) > 1 else "") + "; "
        f"median over rounds, in parentheses the speedup over {CONTENDERS[setup['baseline']][1]} (higher is better "
        f"in every column). `{setup['command']}`, {setup['date']}.",
        "",
        *lines,
        "",
        f"Versions: {versions}.",
    ]
    if failed:
        text += ["", "Failed measurements: " + "; ".join(failed).replace("|", "/") + "."]
    return "\n".join(text) + "\n"


def write_docs(path: Path, device: str, table: str) -> None:
    """Replace the text between this device's markers (appended at the end when the page has none)."""
    start, end = f"<!-- bench:{device}:start -->", f"<!-- bench:{device}:end -->"
    page = path.read_text() if path.exists() else ""
    block = f"{start}\n{table}{end}"
    if start in page and end in page:
        before, rest = page.split(start, 1)
        page = before + block + rest.split(end, 1)[1]
    else:
        page = page.rstrip("\n") + ("\n\n" if page else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def main(argv: list[str] | None = None, default_output: Path | None = None, write_page: bool = True) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contenders", help="comma-separated names (default: all); see --list")
    parser.add_argument("--baseline", choices=tuple(CONTENDERS), default=BASELINE, help="the 1.00x row")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median over rounds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement in a worker (median)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per decode")
    parser.add_argument("--forward", type=int, default=1024, help="tokens of the forward measurement")
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 round, 1 repeat, short prompt: a smoke test")
    parser.add_argument("--output", type=Path, help="JSON (default bench/results/run_<device>.json)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="markdown page whose table is replaced")
    parser.add_argument("--no-docs", action="store_true", help="do not write the markdown page")
    parser.add_argument("--measurements", help=f"comma-separated subset of {', '.join(MEASUREMENTS)} (default: all)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="workers run at once within a round; >1 only for smoke tests (they share the cores)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads per worker (default: the frameworks' own, all cores); 1 is steadier on a "
                             "loaded machine")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker before it is recorded failed")
    parser.add_argument("--list", action="store_true", help="print the contenders and exit")
    parser.add_argument("--worker", choices=tuple(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = run_worker(args.worker, Spec(**json.loads(args.spec)))
        print("RESULT " + json.dumps(result), flush=True)
        return None
    if args.list:
        for name, (_, label, _) in CONTENDERS.items():
            print(f"{name:30} {label}")
        return None

    names = args.contenders.split(",") if args.contenders else list(CONTENDERS)
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    measurements = tuple(args.measurements.split(",")) if args.measurements else MEASUREMENTS
    if set(measurements) - set(MEASUREMENTS):
        parser.error(f"unknown measurements {sorted(set(measurements) - set(MEASUREMENTS))}; "
                     f"choose from {', '.join(MEASUREMENTS)}")
    device = detect_device() if args.device == "auto" else args.device
    if args.quick:
        config, rounds, repeats = QUICK, 1, 1
        prompt, new, forward = min(args.prompt, 8), min(args.new, 8), min(args.forward, 64)
    else:
        config, rounds, repeats, prompt, new, forward = GPT2_124M, args.rounds, args.repeats, args.prompt, args.new, \
            args.forward
    spec = Spec(config=config, prompt=prompt, new=new, forward=forward, repeats=repeats, device=device,
                measurements=measurements, threads=args.threads)
    load_before = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    runs: dict[str, list[dict]] = {name: [] for name in names}
    def one(round_index: int, name: str) -> dict:
        start = time.perf_counter()
        result = _spawn(name, spec, args.timeout)
        print(f"round {round_index + 1}/{rounds} {name}: {result['status']} "
              f"{result.get('values', result.get('error', ''))} ({time.perf_counter() - start:.0f} s)",
              file=sys.stderr, flush=True)
        return result

    output = args.output or default_output or HERE / "results" / f"run_{device}.json"
    shape = "tiny (--quick)" if args.quick else "GPT-2 124M shape"

    def write(complete: bool) -> dict:
        """The JSON and the table so far (rewritten after every worker: an interrupted run keeps what it measured)."""
        report = {
            "setup": {
                "model": f"{shape} {config}, random weights",
                "prompt_tokens": prompt, "new_tokens": new, "forward_tokens": forward, "num_beams": spec.num_beams,
                "rounds": rounds, "repeats": repeats, "jobs": args.jobs, "threads": args.threads or "all", "device": device, "baseline": args.baseline,
                "load_before": load_before,
                "load_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                "complete": complete,
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
            },
            "machine": machine(device),
            "contenders": summarize(names, runs, args.baseline),
            "raw": runs,
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        if write_page and not args.no_docs:
            write_docs(args.docs, device, markdown(report))
        return report

    for round_index in range(rounds):  # A B C ... A B C ...: load from other jobs hits every contender alike
        if args.jobs > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(args.jobs) as pool:
                results = list(pool.map(lambda name: one(round_index, name), names))
            for name, result in zip(names, results):
                runs[name].append(result)
        else:
            for name in names:
                runs[name].append(one(round_index, name))
                write(complete=False)
    report = write(complete=True)
    print(markdown(report))
    print(f"JSON: {output}" + ("" if args.no_docs or not write_page else f"; table written to {args.docs}"))
    return report


if __name__ == "__main__":
    main()
