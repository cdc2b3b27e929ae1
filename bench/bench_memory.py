"""Peak memory (RSS) of loading a checkpoint and of generating, per backend, with transformers 5 as the peer.

For each shape (gpt2-medium: 24 layers x 1024, gpt2-large: 36 x 1280; `--quick`: a tiny one) a float32 checkpoint
of random weights is written once (`weights_convert.pretrained.save_pretrained`: config.json + model.safetensors,
what every backend's `from_pretrained` and transformers read) into a temporary directory. Then every
(contender, shape, phase) runs in a fresh interpreter, one after the other, and reports its own peak RSS (`VmHWM`
of /proc/self/status; `ru_maxrss` elsewhere):

* `import`: the interpreter, the framework and the backend imported, nothing else: the baseline;
* `generate b=1`, `generate b=8`: the same, then `from_pretrained(checkpoint)` (its peak is the `load` phase, taken
  from the b=1 process before it generates; `--separate-load` measures it in a process of its own as well), then the
  peak is reset to the loaded model's RSS (`/proc/self/clear_refs`) and one greedy `generate` of `--new-tokens`
  tokens (end-of-text off, so every call makes all of them) after a random prompt of `--prompt` tokens in a batch
  of 1 or 8 runs: its peak is what generation needs on top of the loaded model;
* transformers 5 (`GPT2LMHeadModel.from_pretrained`, the loading peer): `import` and `load` only.

The table shows the load's peak, what it added to the baseline and that increment over the checkpoint's size: an
ideal loader adds ~1x (the parameters once; one that holds the file's tensors and the model's parameters at the
same time reaches 2x). Generation adds its activations, the KV cache (sized by the decoding plan,
`gpt2_core.generation.plan_decoding`: prompt bucket + new-token bucket, not `n_positions`; its bytes are listed as
`kv_cache_mb`) and, for the XLA backends, the compiled program. The parent watches each child's RSS and stops one
that passes `--max-rss-gb`.

    python bench/bench_memory.py                     # bench/results/memory_cpu.json, markdown table on stdout
    python bench/bench_memory.py --quick --contenders gpt2_torch --output /tmp/m.json     # smoke test, seconds
    python bench/bench_memory.py --shapes gpt2-medium --contenders gpt2_torch,transformers --checkpoints /tmp/ck
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUTPUT = HERE / "results" / "memory_cpu.json"
MB = 1e6

SHAPES = {
    "gpt2-medium": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"vocab_size": 50257, "n_positions": 1024, "n_embd": 1280, "n_layer": 36, "n_head": 20},
}
QUICK = {"tiny": {"vocab_size": 50257, "n_positions": 128, "n_embd": 64, "n_layer": 2, "n_head": 2}}

# name -> (label, environment of its subprocess)
CONTENDERS = {
    "gpt2_torch": ("gpt2_torch", {}),
    "gpt2_tf": ("gpt2_tf (XLA)", {"KERAS_BACKEND": "tensorflow"}),
    "gpt2_flax": ("gpt2_flax (jit)", {}),
    "transformers": ("transformers 5 GPT2LMHeadModel", {}),
}
PHASES = ("import", "load", "generate_b1", "generate_b8")
# transformers is the loading peer only (its generate is timed by bench/run.py)
CONTENDER_PHASES = {"transformers": ("import", "load")}
PHASE_LABELS = {"import": "import (baseline)", "load": "from_pretrained peak",
                "generate_b1": "generate b=1 peak", "generate_b8": "generate b=8 peak"}  # fmt: skip


# -- measuring, in the child ---------------------------------------------------------------------------------------
def memory_status() -> dict[str, float]:
    """This process's peak and current RSS (MB): VmHWM, VmRSS, and the current anonymous / file-backed parts."""
    status = Path("/proc/self/status")
    if status.exists():
        fields = {}
        for line in status.read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0]) * 1024 / MB  # kB
        return {"peak_mb": fields["VmHWM"], "rss_mb": fields["VmRSS"],
                "rss_anon_mb": fields.get("RssAnon", 0.0), "rss_file_mb": fields.get("RssFile", 0.0)}  # fmt: skip
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak / MB if sys.platform == "darwin" else peak * 1024 / MB  # bytes on macOS, KiB on Linux
    return {"peak_mb": peak_mb, "rss_mb": float("nan"), "rss_anon_mb": float("nan"), "rss_file_mb": float("nan")}


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: `echo 5 > /proc/self/clear_refs`); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _import(contender: str) -> Any:
    """Import the framework and the backend; return the LM class."""
    if contender == "gpt2_torch":
        from gpt2_torch import GPT2LMHeadModel

        return GPT2LMHeadModel
    if contender == "gpt2_tf":
        from gpt2_tf import TFGPT2LMHeadModel

        return TFGPT2LMHeadModel
    if contender == "gpt2_flax":
        from gpt2_flax import FlaxGPT2LMHeadModel

        return FlaxGPT2LMHeadModel
    if contender == "transformers":
        from transformers import GPT2LMHeadModel

        return GPT2LMHeadModel
    raise ValueError(f"Unknown contender. Received: contender={contender!r}. Use one of {', '.join(CONTENDERS)}.")


def _generate(contender: str, model: Any, batch: int, prompt: int, new_tokens: int, vocab_size: int) -> int:
    """One greedy generate of exactly `new_tokens` tokens; returns the columns of the result."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, vocab_size, (batch, prompt))
    if contender in ("gpt2_torch", "transformers"):
        import torch

        kwargs: dict[str, Any] = {"eos_token_id": []}
        if contender == "transformers":  # its way to switch end-of-text off
            model.generation_config.eos_token_id = None
            model.generation_config.pad_token_id = 0
            kwargs = {}
        with torch.inference_mode():
            out = model.generate(torch.as_tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                                 max_new_tokens=new_tokens, do_sample=False, **kwargs)  # fmt: skip
        return int(out.shape[1])
    ids = ids.astype(np.int32)
    out = model.generate(ids, attention_mask=np.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                         eos_token_id=[])  # fmt: skip
    sequences = getattr(out, "sequences", out)
    return int(np.asarray(sequences).shape[1])


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One phase of one contender in this (fresh) process.

    `import` and `load` report the process's peak. A `generate` phase loads too, reports that peak as `load`, then
    resets the peak to the RSS of the loaded model (`loaded_mb`) and reports the peak of the generate call: what
    generation needs on top of the model, not hidden under the load's transient peak."""
    import gc

    contender, phase = job["contender"], job["phase"]
    start = time.perf_counter()
    cls = _import(contender)
    result: dict[str, Any] = {"import_s": time.perf_counter() - start}
    if phase != "import":
        start = time.perf_counter()
        model = cls.from_pretrained(job["checkpoint"])
        if contender == "transformers":
            model.eval()
        result["load_s"] = time.perf_counter() - start
        if phase.startswith("generate"):
            gc.collect()
            result["load"] = memory_status()
            result["loaded_mb"] = result["load"]["rss_mb"]
            result["peak_reset"] = reset_peak()
            start = time.perf_counter()
            columns = _generate(contender, model, job["batch"], job["prompt"], job["new_tokens"], job["vocab_size"])
            result["generate_s"] = time.perf_counter() - start
            if columns != job["prompt"] + job["new_tokens"]:
                raise RuntimeError(f"generate returned {columns} columns, not prompt + new tokens")
    result.update(memory_status())
    return result


def make_checkpoint(job: dict[str, Any]) -> dict[str, Any]:
    """Random float32 weights of `job["config"]` as config.json + model.safetensors in `job["directory"]` (kept
    when a checkpoint of this config is already there)."""
    from gpt2_core import reference
    from gpt2_core.config import GPT2Config
    from gpt2_core.memory import num_parameters

    config = GPT2Config(**job["config"])
    directory = Path(job["directory"])
    weights = directory / "model.safetensors"
    saved = directory / "config.json"
    same = saved.exists() and all(json.loads(saved.read_text()).get(k) == v for k, v in job["config"].items())
    if not (same and weights.exists()):
        from weights_convert.pretrained import save_pretrained

        save_pretrained(directory, config, reference.random_params(config, "lm", seed=0), "lm")
    return {"n_params": num_parameters(config), "checkpoint_mb": weights.stat().st_size / MB}


# -- running, in the parent ----------------------------------------------------------------------------------------
def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / MB
    except (OSError, ValueError):
        pass
    return 0.0


def spawn(job: dict[str, Any], env: dict[str, str], timeout: float, max_rss_mb: float) -> dict[str, Any]:
    """Run `job` in a fresh interpreter; its JSON result, or {"error": ...}. Stopped past `timeout` s or
    `max_rss_mb` (the parent polls the child's RSS)."""
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu", **env)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, __file__, "--child", json.dumps(job)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env, cwd=REPO, start_new_session=True)
        deadline = time.monotonic() + timeout
        error = None
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    error = f"timed out after {timeout:.0f} s"
                elif _rss_mb(proc.pid) > max_rss_mb:
                    error = f"stopped: RSS passed {max_rss_mb:.0f} MB"
                if error:
                    break
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        if error:
            return {"error": error}
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            tail = [line for line in err.read().strip().splitlines() if line.strip()][-1:] or ["no output"]
            return {"error": f"exit {proc.returncode}: {tail[0][:300]}"}
        return json.loads(lines[-1][len("RESULT "):])


def kv_cache_mb(config: dict[str, int], batch: int, prompt: int, new_tokens: int) -> float:
    """Bytes (MB) of the float32 KVCache the decoding plan allocates for this request."""
    from gpt2_core.config import GPT2Config
    from gpt2_core.generation import plan_decoding

    plan = plan_decoding(GPT2Config(**config), batch, prompt, new_tokens)
    return 2 * config["n_layer"] * batch * plan.cache_length * config["n_embd"] * 4 / MB


def run(args: argparse.Namespace, save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    shapes = QUICK if args.quick else {name: SHAPES[name] for name in args.shapes}
    prompt, new_tokens = (8, 8) if args.quick else (args.prompt, args.new_tokens)
    results: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},  # fmt: skip
        "command": " ".join(["python", "bench/bench_memory.py", *sys.argv[1:]]),
        "prompt": prompt, "new_tokens": new_tokens, "shapes": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        root = args.checkpoints or Path(tmp)
        for shape, config in shapes.items():
            directory = str(root / shape)
            job = {"make": True, "config": config, "directory": directory}
            made = spawn(job, {}, args.timeout, args.max_rss_gb * 1e3)
            if "error" in made:
                raise SystemExit(f"writing the {shape} checkpoint failed: {made['error']}")
            entry = {"config": config, **{k: made[k] for k in ("n_params", "checkpoint_mb")},
                     "prompt": prompt, "new_tokens": new_tokens,
                     "kv_cache_mb": {f"b{b}": kv_cache_mb(config, b, prompt, new_tokens) for b in (1, 8)},
                     "contenders": {}}  # fmt: skip
            results["shapes"][shape] = entry
            for contender in args.contenders:
                phases = {}
                for phase in CONTENDER_PHASES.get(contender, PHASES):
                    if phase not in args.phases:
                        continue
                    separate = args.separate_load or contender in CONTENDER_PHASES or "generate_b1" not in args.phases
                    if phase == "load" and not separate:
                        continue  # measured by the generate b=1 process, before its generate call
                    job = {"contender": contender, "phase": phase, "checkpoint": directory, "prompt": prompt,
                           "new_tokens": new_tokens, "vocab_size": config["vocab_size"],
                           "batch": int(phase[-1]) if phase.startswith("generate") else 0}  # fmt: skip
                    got = spawn(job, CONTENDERS[contender][1], args.timeout, args.max_rss_gb * 1e3)
                    phases[phase] = got
                    print(f"{shape} {contender} {phase}: {got}", file=sys.stderr, flush=True)
                if "load" not in phases and "load" in phases.get("generate_b1", {}):
                    first = phases["generate_b1"]
                    phases["load"] = dict(first["load"], import_s=first["import_s"], load_s=first["load_s"],
                                          source="the generate_b1 process, before generate")  # fmt: skip
                    phases = {p: phases[p] for p in PHASES if p in phases}
                base = phases["import"].get("peak_mb")
                for phase, got in phases.items():
                    if "peak_mb" in got and base is not None:
                        got["added_mb"] = got["peak_mb"] - base
                        got["added_over_checkpoint"] = got["added_mb"] / entry["checkpoint_mb"]
                    if "loaded_mb" in got and "peak_mb" in got:
                        got["over_loaded_mb"] = got["peak_mb"] - got["loaded_mb"]
                entry["contenders"][contender] = phases
                save(results)  # after every contender: an interrupted run keeps what it measured
    return results


def markdown(results: dict[str, Any]) -> str:
    """The table, per shape and contender (MB): the import baseline; the peak of from_pretrained, + what it added
    over the baseline and that over the checkpoint's size; the RSS of the loaded model; each generate call's peak
    and + what it added over the loaded model."""
    lines = ["| shape (checkpoint) | contender | import (baseline) | from_pretrained peak | loaded model | "
             "generate b=1 peak | generate b=8 peak |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for shape, entry in results["shapes"].items():
        for contender, phases in entry["contenders"].items():
            cells = []
            for phase in PHASES:
                got = phases.get(phase)
                if got is None or "error" in got:
                    cells.append("-" if got is None else f"failed: {got['error'][:60]}")
                    if phase == "load":
                        cells.append("-")
                elif phase == "import":
                    cells.append(f"{got['peak_mb']:.0f}")
                elif phase == "load":
                    cells.append(f"{got['peak_mb']:.0f} (+{got['added_mb']:.0f}, {got['added_over_checkpoint']:.2f}x)")
                    cells.append(f"{got['rss_mb']:.0f}")
                else:
                    cells.append(f"{got['peak_mb']:.0f} (+{got['over_loaded_mb']:.0f})")
            label = f"{shape} ({entry['checkpoint_mb']:.0f} MB)"
            lines.append(f"| {label} | {CONTENDERS[contender][0]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tiny shape, prompt 8, 8 new tokens: a smoke test")
    parser.add_argument("--shapes", default="gpt2-medium,gpt2-large", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated, of {', '.join(CONTENDERS)}")  # fmt: skip
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per subprocess")
    parser.add_argument("--max-rss-gb", type=float, default=10.0, help="stop a subprocess whose RSS passes this")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="the JSON results")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="keep the checkpoints here (reused by the next run) instead of a temporary directory")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    parser.add_argument("--separate-load", action="store_true",
                        help="measure from_pretrained in a process of its own too (default: the generate b=1 "
                        "process reports its peak before generating)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        result = make_checkpoint(job) if job.get("make") else child(job)
        print("RESULT " + json.dumps(result), flush=True)
        return
    args.shapes = [s for s in args.shapes.split(",") if s]
    args.contenders = [c for c in args.contenders.split(",") if c]
    args.phases = [p for p in args.phases.split(",") if p]
    if "import" not in args.phases:
        parser.error("--phases needs import (the baseline)")
    for name, known, what in (("shapes", SHAPES, "shape"), ("contenders", CONTENDERS, "contender"),
                              ("phases", PHASES, "phase")):  # fmt: skip
        unknown = [v for v in getattr(args, name) if v not in known]
        if unknown:
            parser.error(f"unknown {what} {unknown}; use some of {', '.join(known)}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    results = run(args, lambda r: args.output.write_text(json.dumps(r, indent=1) + "\n"))
    print(markdown(results))


if __name__ == "__main__":
    main()
