"""Benchmark gpt2_flax against keras-hub's GPT2CausalLM on the JAX backend (both XLA), GPT-2 124M shape, random
weights, float32:

* cached greedy decoding, tokens/s, at batch 1 and batch 8 (prompt of `--prompt` tokens, `--new` new tokens; the
  time of a whole `generate` call, prompt processing included, after a warm-up call that compiles);
* one forward pass over 1 x 1024 tokens (compiled), seconds.

Each side runs in its own subprocess, one after the other (same machine, same threads), alternating for `--rounds`
rounds; the best of every measurement is kept. The parent prints a table
(markdown) with the ratios and writes JSON.

    python bench/bench_flax.py                       # table + bench/results/flax.json
    python bench/bench_flax.py --repeats 5 --new 128

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
BATCHES = (1, 8)


def _best(fn, repeats: int) -> float:
    fn()  # warm-up: compiles
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _prompts(batch: int, prompt: int, vocab: int = 50257):
    import numpy as np

    return np.random.default_rng(0).integers(0, vocab, (batch, prompt)).astype(np.int32)


def run_ours(args) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from gpt2_core import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel

    config = GPT2Config.from_preset("gpt2")
    model = FlaxGPT2LMHeadModel.from_config(config, seed=0)
    out = {"decode_tokens_per_s": {}}
    for batch in BATCHES:
        ids = _prompts(batch, args.prompt)

        def decode():
            result = model.generate(ids, max_new_tokens=args.new, eos_token_id=[]).sequences
            assert result.shape == (batch, args.prompt + args.new)
            result.block_until_ready()

        out["decode_tokens_per_s"][str(batch)] = batch * args.new / _best(decode, args.repeats)
    forward_fn = nnx.jit(lambda m, x: m(x, use_cache=False).logits)
    ids = _prompts(1, 1024)
    out["forward_1x1024_s"] = _best(lambda: forward_fn(model, ids).block_until_ready(), args.repeats)
    out["versions"] = {"jax": jax.__version__, "flax": __import__("flax").__version__, "numpy": np.__version__}
    return out


def run_keras_hub(args) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import keras
    import keras_hub
    import numpy as np

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=50257, num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=3072,
        max_sequence_length=1024,
    )
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    out = {"decode_tokens_per_s": {}}
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

        out["decode_tokens_per_s"][str(batch)] = batch * args.new / _best(decode, args.repeats)
    ids = _prompts(1, 1024)
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}
    out["forward_1x1024_s"] = _best(lambda: lm.predict_on_batch(x), args.repeats)
    out["versions"] = {"jax": jax.__version__, "keras": keras.__version__, "keras_hub": keras_hub.__version__}
    return out


def _keep_best(old: dict | None, new: dict) -> dict:
    if old is None:
        return new
    for batch, rate in new["decode_tokens_per_s"].items():
        old["decode_tokens_per_s"][batch] = max(old["decode_tokens_per_s"][batch], rate)
    old["forward_1x1024_s"] = min(old["forward_1x1024_s"], new["forward_1x1024_s"])
    return old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new tokens per decode")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating runs of the two sides (best is kept)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "flax.json")
    parser.add_argument("--worker", choices=("ours", "keras_hub"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = run_ours(args) if args.worker == "ours" else run_keras_hub(args)
        print("RESULT " + json.dumps(result))
        return

    results: dict[str, dict] = {}
    for _ in range(args.rounds):  # alternate the two sides so that load from other jobs hits both alike
        for worker in ("ours", "keras_hub"):
            env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="2")
            cmd = [sys.executable, __file__, "--worker", worker, "--prompt", str(args.prompt), "--new", str(args.new),
                   "--repeats", str(args.repeats)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parent)
            lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                sys.exit(f"{worker} failed:\n{proc.stderr[-4000:]}")
            results[worker] = _keep_best(results.get(worker), json.loads(lines[-1][len("RESULT "):]))

    ours, peer = results["ours"], results["keras_hub"]
    rows = []
    for batch in BATCHES:
        a, b = ours["decode_tokens_per_s"][str(batch)], peer["decode_tokens_per_s"][str(batch)]
        rows.append((f"greedy decode, batch {batch} (tokens/s, higher is better)", a, b, a / b))
    a, b = ours["forward_1x1024_s"], peer["forward_1x1024_s"]
    rows.append(("forward 1x1024 (s, lower is better)", a, b, b / a))
    report = {
        "setup": {
            "model": "GPT-2 124M shape, random weights, float32",
            "prompt_tokens": args.prompt,
            "new_tokens": args.new,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "command": "python bench/bench_flax.py " + " ".join(sys.argv[1:]),
        },
        "gpt2_flax": ours,
        "keras_hub": peer,
        "speedup": {name: ratio for name, _, _, ratio in rows},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print("| measurement | gpt2_flax | keras-hub | gpt2_flax speedup |")
    print("|---|---:|---:|---:|")
    for name, a, b, ratio in rows:
        print(f"| {name} | {a:.3g} | {b:.3g} | {ratio:.2f}x |")
    print(f"JSON: {args.output}")


if __name__ == "__main__":
    main()
