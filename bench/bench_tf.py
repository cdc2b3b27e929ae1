"""Benchmark gpt2_tf against keras-hub's GPT2CausalLM on the TensorFlow backend (both XLA-compiled), GPT-2 124M
shape, random weights, float32, TF32 off:

* cached greedy decoding, tokens/s, at batch 1 and batch 8 (prompt of `--prompt` tokens, `--new` new tokens; the
  time of a whole `generate` call, prompt processing included, after a warm-up call that traces and compiles);
* one forward pass over 1 x 1024 tokens (`tf.function(jit_compile=True)`), seconds.

Each side runs in its own subprocess, one after the other (same machine, same threads); the parent prints a table
with the ratios and the compile times, and writes JSON.

    python bench/bench_tf.py                       # table + bench/results/tf.json
    python bench/bench_tf.py --repeats 5 --new 128

Needs `pip install keras-hub` (the `bench` extra) for the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
BATCHES = (1, 8)


def _best(fn, repeats: int) -> tuple[float, float]:
    """(first call: trace + XLA compile + run, best of `repeats` timed calls) in seconds."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, min(times)


def _prompts(batch: int, prompt: int, vocab: int = 50257):
    import numpy as np

    return np.random.default_rng(0).integers(0, vocab, (batch, prompt)).astype(np.int32)


def _setup_tf():
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(False)
    return tf


def run_ours(args) -> dict:
    import keras
    import numpy as np

    tf = _setup_tf()
    from gpt2_core import GPT2Config
    from gpt2_tf import TFGPT2LMHeadModel

    config = GPT2Config.from_preset("gpt2")
    model = TFGPT2LMHeadModel(config, seed=0)
    out = {"decode_tokens_per_s": {}, "compile_s": {}}
    for batch in BATCHES:
        ids = _prompts(batch, args.prompt)

        def decode():
            result = model.generate(ids, max_new_tokens=args.new, eos_token_id=[])
            assert result.shape == (batch, args.prompt + args.new)

        first, best = _best(decode, args.repeats)
        out["decode_tokens_per_s"][str(batch)] = batch * args.new / best
        out["compile_s"][f"decode_{batch}"] = first - best
    forward_fn = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
    ids = tf.constant(_prompts(1, 1024))
    first, best = _best(lambda: forward_fn(ids).numpy(), args.repeats)
    out["forward_1x1024_s"] = best
    out["compile_s"]["forward"] = first - best
    out["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    return out


def run_keras_hub(args) -> dict:
    import keras
    import keras_hub
    import numpy as np

    tf = _setup_tf()
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
        max_sequence_length=1024,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    lm.compile(sampler="greedy")  # its default sampler is top-k; greedy is what ours is timed on
    out = {"decode_tokens_per_s": {}, "compile_s": {}}
    for batch in BATCHES:
        # keras-hub generates into the padded tail: prompt first, padding_mask False where tokens are to come.
        total = args.prompt + args.new
        token_ids = np.zeros((batch, total), np.int32)
        token_ids[:, : args.prompt] = _prompts(batch, args.prompt)
        padding_mask = np.zeros((batch, total), bool)
        padding_mask[:, : args.prompt] = True
        inputs = {"token_ids": token_ids, "padding_mask": padding_mask}

        def decode():
            result = lm.generate(inputs, stop_token_ids=None)
            assert result["token_ids"].shape == (batch, total)

        first, best = _best(decode, args.repeats)
        out["decode_tokens_per_s"][str(batch)] = batch * args.new / best
        out["compile_s"][f"decode_{batch}"] = first - best
    ids = _prompts(1, 1024)
    x = {"token_ids": tf.constant(ids), "padding_mask": tf.ones_like(ids, tf.bool)}
    forward_fn = tf.function(lambda x: lm(x), jit_compile=True)
    first, best = _best(lambda: forward_fn(x).numpy(), args.repeats)
    out["forward_1x1024_s"] = best
    out["compile_s"]["forward"] = first - best
    out["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__, "keras_hub": keras_hub.__version__}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=64, help="new tokens per decode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "tf.json")
    parser.add_argument("--worker", choices=("ours", "keras_hub"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_ours(args) if args.worker == "ours" else run_keras_hub(args)
        print("RESULT " + json.dumps(result))
        return

    results = {}
    for worker in ("ours", "keras_hub"):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
        cmd = [sys.executable, __file__, "--worker", worker, "--prompt", str(args.prompt), "--new", str(args.new),
               "--repeats", str(args.repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{worker} failed:\n{proc.stderr[-4000:]}")
        results[worker] = json.loads(lines[-1][len("RESULT "):])

    ours, peer = results["ours"], results["keras_hub"]
    rows = []
    for batch in BATCHES:
        a, b = ours["decode_tokens_per_s"][str(batch)], peer["decode_tokens_per_s"][str(batch)]
        rows.append((f"greedy decode, batch {batch} (tokens/s, higher is better)", a, b, a / b))
    a, b = ours["forward_1x1024_s"], peer["forward_1x1024_s"]
    rows.append(("forward 1x1024 (s, lower is better)", a, b, b / a))
    report = {
        "setup": {
            "model": "GPT-2 124M shape, random weights, float32, TensorFlow backend, XLA",
            "prompt_tokens": args.prompt,
            "new_tokens": args.new,
            "repeats": args.repeats,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": "python bench/bench_tf.py " + " ".join(sys.argv[1:]),
        },
        "gpt2_tf": ours,
        "keras_hub": peer,
        "speedup": {name: ratio for name, _, _, ratio in rows},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {'gpt2_tf':>10}  {'keras-hub':>10}  {'speedup':>8}")
    for name, a, b, ratio in rows:
        print(f"{name:{width}}  {a:10.3f}  {b:10.3f}  {ratio:7.2f}x")
    print(f"compile (first call minus a timed call, s): gpt2_tf {ours['compile_s']}, keras-hub {peer['compile_s']}")
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
