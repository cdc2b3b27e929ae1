"""A/B experiments on XLA:CPU batch-1 / batch-8 decoding and the 1x1024 forward (issue 13, item 3), in one process,
interleaved rounds, medians: the figures of docs/performance.md's "TensorFlow: batch-1 decoding profile" and
"JAX/Flax: batch-1 decoding profile" sections.

    python bench/bench_xla_decode.py split       # independent dots: 1 vs n pieces per projection (JAX and TF)
    python bench/bench_xla_decode.py threads     # CPU time per thread of one chain of dependent one-row products
    python bench/bench_xla_decode.py layout      # one-row products over [in, out] vs [out, in] weights (JAX and TF)
    python bench/bench_xla_decode.py flax_decode # gpt2_flax generate: kernels as stored vs transposed in the program
    python bench/bench_xla_decode.py forward     # forward 1x1024: the blocks alone vs blocks + the LM head
    python bench/bench_xla_decode.py tf_head     # TF's LM head at 1x1024 in three equivalent forms
    python bench/bench_xla_decode.py flags       # decode b=8 and forward 1x1024 under XLA_FLAGS variants (subprocesses)
    python bench/bench_xla_decode.py tf_forward  # gpt2_tf forward 1x1024: XLA (bench/run.py), graph, eager
    python bench/bench_xla_decode.py tf_generate --batch 8   # gpt2_tf generate: committed vs bias kept out of the
                                                 # dot's fusion vs the same loop as a tf.function graph (no XLA)
    python bench/bench_xla_decode.py tf_profile --batch 8    # gpt2_tf generate (or --forward): thread time per XLA
                                                 # thunk, grouped by dot shape / fusion kind

Options: --rounds N (interleaved rounds, default 7; threads: calls), --batch B (flax_decode, tf_generate, tf_profile),
--backend tf|flax (forward, flags), --layers L (tf_generate, tf_profile: fewer blocks for a quick check), --forward
(tf_profile). TF's oneDNN kernels (graph and eager modes only; XLA does not use them) are off by default on this AVX2
CPU: `TF_ENABLE_ONEDNN_OPTS=1` in the environment turns them on.
GPT-2 124M shapes (12 x 768, vocab 50257), random weights, fp32; prompt 32, 64 new tokens, greedy, no eos.
Each experiment prints one line per variant: median wall time, median process CPU time, and the speed against the
first variant (> 1 is faster). On a shared machine only those ratios mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# the GPT-2 124M block projections, [in, out]: c_attn, attn.c_proj, c_fc, mlp.c_proj, for 12 layers
SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12
STEPS = 16  # chained passes over the 48 matrices per call (one pass = the block weights of one decoding step)


Timings = dict[str, list[float]]


def _rounds(variants: dict[str, Callable[[], Any]], rounds: int) -> tuple[Timings, Timings]:
    """(wall s, process CPU s) per variant and round: each round runs every variant once, the order reversed every
    other round."""
    names = list(variants)
    wall: Timings = {k: [] for k in names}
    cpu: Timings = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            c, t = time.process_time(), time.perf_counter()
            variants[k]()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    return wall, cpu


def _interleaved(variants: dict[str, Callable[[], Any]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median (wall s, process CPU s) per variant over `rounds` rounds (`_rounds`)."""
    names = list(variants)
    wall, cpu = _rounds(variants, rounds)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {k: (med(wall[k]), med(cpu[k])) for k in names}


def _report(title: str, result: dict[str, tuple[float, float]], unit: float = 1.0, unit_name: str = "s") -> None:
    base = next(iter(result.values()))[0]
    print(f"# {title} (load average {os.getloadavg()[0]:.1f})")
    for k, (w, c) in result.items():
        print(f"{k:40s} wall {w * unit:8.2f} {unit_name}  cpu {c * unit:8.2f} {unit_name}  speed {base / w:5.2f}x")
    sys.stdout.flush()


def _weights(transposed: bool = False) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    ws = [rng.standard_normal(s, dtype=np.float32) * 0.02 for s in SHAPES]
    return [w.T.copy() for w in ws] if transposed else ws


def _jax_chain(pieces: int, transposed: bool = False) -> Callable:
    """A jitted fori_loop of STEPS passes; each pass chains the 48 one-row products (x -> tanh(fold(x @ W))), each
    product split into `pieces` independent dots over column blocks of W (concatenated after)."""
    import jax
    import jax.numpy as jnp

    def dot(x, w):  # x (1, in); w [in, out], or [out, in] when transposed
        return jax.lax.dot_general(x, w, (((1,), (1 if transposed else 0,)), ((), ())))

    def one_pass(x, ws):
        for parts in ws:
            n_in = parts[0].shape[1 if transposed else 0]
            xx = jnp.tile(x, (1, n_in // 768))
            y = jnp.concatenate([dot(xx, w) for w in parts], axis=-1)
            x = jnp.tanh(y.reshape(1, -1, 768).sum(1))
        return x

    @jax.jit
    def run(x, ws):
        return jax.lax.fori_loop(0, STEPS, lambda i, x: one_pass(x, ws), x)

    return run


def _split_columns(ws: list, pieces: int, axis: int) -> list:
    import numpy as np

    return [tuple(np.split(w, pieces, axis=axis)) for w in ws]


def exp_split(args: argparse.Namespace) -> None:
    """Idea 1: can XLA:CPU run the halves of a one-row product on both cores? 1, 2 and 16 independent dots."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tensorflow as tf

    ws = _weights()
    x = np.random.default_rng(1).standard_normal((1, 768)).astype(np.float32)
    variants, ref = {}, None
    for n in (1, 2, 16):
        parts = [tuple(jnp.asarray(p) for p in ps) for ps in _split_columns(ws, n, 1)]
        f = _jax_chain(n)
        out = np.asarray(f(x, parts))
        ref = out if ref is None else ref
        assert np.allclose(out, ref, atol=1e-5), n
        variants[f"jax, {n} dot(s) per projection"] = (lambda f=f, p=parts: jax.block_until_ready(f(x, p)))

    def tf_chain(n: int) -> Callable:
        parts = [tuple(tf.constant(p) for p in ps) for ps in _split_columns(ws, n, 1)]

        @tf.function(jit_compile=True)
        def run(x):
            def one_pass(i, x):
                for ps in parts:
                    xx = tf.tile(x, (1, ps[0].shape[0] // 768))
                    y = tf.concat([tf.matmul(xx, w) for w in ps], axis=-1)
                    x = tf.tanh(tf.reduce_sum(tf.reshape(y, (1, -1, 768)), 1))
                return i + 1, x

            return tf.while_loop(lambda i, x: i < STEPS, one_pass, (tf.constant(0), x))[1]

        out = run(tf.constant(x)).numpy()
        assert np.allclose(out, ref, atol=1e-5), n
        return lambda: run(tf.constant(x)).numpy()

    for n in (1, 2, 16):
        variants[f"tf, {n} dot(s) per projection"] = tf_chain(n)
    res = _interleaved(variants, args.rounds)
    _report("split: 48 block products x 16 steps, per step", {k: (w / STEPS, c / STEPS) for k, (w, c) in res.items()},
            1e3, "ms")


def exp_threads(args: argparse.Namespace) -> None:
    """Whether one chain of dependent one-row products (nothing to overlap) uses more than one thread: CPU ticks
    per thread of this process (/proc/self/task, Linux) over `rounds` calls of the 1-dot chain of `split`."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    def ticks() -> dict[str, int]:
        out = {}
        for tid in os.listdir("/proc/self/task"):
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            out[tid] = int(fields[11]) + int(fields[12])  # utime + stime
        return out

    parts = [(jnp.asarray(w),) for w in _weights()]
    x = np.random.default_rng(1).standard_normal((1, 768)).astype(np.float32)
    f = _jax_chain(1)
    jax.block_until_ready(f(x, parts))
    before, t = ticks(), time.perf_counter()
    for _ in range(args.rounds):
        jax.block_until_ready(f(x, parts))
    wall, after = time.perf_counter() - t, ticks()
    busy = sorted((after[k] - before.get(k, 0) for k in after), reverse=True)
    hz = os.sysconf("SC_CLK_TCK")
    print(f"# threads (load average {os.getloadavg()[0]:.1f}): {args.rounds} calls, wall {wall:.2f} s; CPU s of the "
          f"busiest threads: {[round(b / hz, 2) for b in busy[:6]]}")


def exp_layout(args: argparse.Namespace) -> None:
    """Idea 3 (weight layout): the same chained one-row products over [in, out] weights (XLA's col-major GEMV) and
    over the transposed [out, in] copies (its row-major GEMV), in JAX and in TF."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(1).standard_normal((1, 768)).astype(np.float32)
    variants = {}
    outs = []
    for transposed in (False, True):
        parts = [(jnp.asarray(w),) for w in _weights(transposed)]
        f = _jax_chain(1, transposed)
        outs.append(np.asarray(f(x, parts)))
        variants[f"jax {'[out, in]' if transposed else '[in, out]'}"] = (
            lambda f=f, p=parts: jax.block_until_ready(f(x, p)))
    for transposed in (False, True):
        ws = [tf.constant(w) for w in _weights(transposed)]

        @tf.function(jit_compile=True)
        def run(x, ws=ws, transposed=transposed):
            def one_pass(i, x):
                for w in ws:
                    xx = tf.tile(x, (1, w.shape[1 if transposed else 0] // 768))
                    x = tf.tanh(tf.reduce_sum(tf.reshape(tf.matmul(xx, w, transpose_b=transposed), (1, -1, 768)), 1))
                return i + 1, x

            return tf.while_loop(lambda i, x: i < STEPS, one_pass, (tf.constant(0), x))[1]

        outs.append(run(tf.constant(x)).numpy())
        variants[f"tf {'[out, in]' if transposed else '[in, out]'}"] = (lambda run=run: run(tf.constant(x)).numpy())
    assert all(np.allclose(o, outs[0], atol=1e-5) for o in outs)
    res = _interleaved(variants, args.rounds)
    _report("layout: 48 block products x 16 steps, per step", {k: (w / STEPS, c / STEPS) for k, (w, c) in res.items()},
            1e3, "ms")


def exp_flax_decode(args: argparse.Namespace) -> None:
    """gpt2_flax's decode program as committed (A) against the same program with every block kernel transposed
    once, inside the program, before the loop (B): the loop's products then read [out, in] weights (XLA's
    row-major GEMV, verified in the optimized HLO). Tokens must be equal."""
    import functools

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import gpt2_flax.generation as G
    from gpt2_core import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel

    transposed = {"on": False}
    merge = nnx.merge

    def merge_transposed(*a: Any, **k: Any) -> Any:
        model = merge(*a, **k)
        if transposed["on"]:
            for _, module in model.iter_modules():
                if isinstance(module, nnx.Linear):
                    object.__setattr__(module, "_kernel_t", jnp.transpose(module.kernel[...]))
        return model

    linear_call = nnx.Linear.__call__

    def call(self: nnx.Linear, inputs: Any, out_sharding: Any = None) -> Any:
        kernel_t = self.__dict__.get("_kernel_t")
        if kernel_t is None:
            return linear_call(self, inputs, out_sharding)
        y = jax.lax.dot_general(inputs, kernel_t, (((inputs.ndim - 1,), (1,)), ((), ())))
        return y + self.bias[...]

    nnx.merge, nnx.Linear.__call__ = merge_transposed, call
    raw = G._generate.__wrapped__

    @functools.wraps(raw)
    def generate_transposed(*a: Any, **k: Any) -> Any:
        transposed["on"] = True
        try:
            return raw(*a, **k)
        finally:
            transposed["on"] = False

    programs = {"A: kernels as stored [in, out]": G._generate,
                "B: kernels transposed in the program": jax.jit(
                    generate_transposed, static_argnames=("structure", "spec"), donate_argnames=("carry",))}
    model = FlaxGPT2LMHeadModel.from_config(GPT2Config(), seed=0)
    ids = np.random.default_rng(args.batch).integers(0, 50257, (args.batch, 32))

    def run(program: Any) -> np.ndarray:
        G._generate = program
        out = model.generate(ids, attention_mask=np.ones_like(ids), max_new_tokens=64, do_sample=False,
                             eos_token_id=[])
        return np.asarray(out.sequences)

    tokens = [run(p) for p in programs.values()]
    assert all(np.array_equal(t, tokens[0]) for t in tokens), "tokens differ"
    res = _interleaved({k: (lambda p=p: run(p)) for k, p in programs.items()}, args.rounds)
    _report(f"flax_decode b={args.batch}, 64 new tokens (tokens equal); tok/s = {64 * args.batch} / wall", res)


def exp_forward(args: argparse.Namespace) -> None:
    """What the 1x1024 forward spends on the LM head: the compiled forward of the blocks alone (last hidden state)
    against the whole forward (blocks + the 1024 x 50257 logits), as bench/run.py compiles it."""
    import numpy as np

    from gpt2_core import GPT2Config

    ids = np.random.default_rng(0).integers(0, 50257, (1, 1024)).astype(np.int32)
    if args.backend == "flax":
        from flax import nnx

        from gpt2_flax import FlaxGPT2LMHeadModel

        model = FlaxGPT2LMHeadModel.from_config(GPT2Config(), seed=0)
        body = nnx.jit(lambda m, x: m.transformer(x, use_cache=False).last_hidden_state)
        full = nnx.jit(lambda m, x: m(x, use_cache=False).logits)
        variants = {"blocks + LM head (bench/run.py)": lambda: full(model, ids).block_until_ready(),
                    "blocks only": lambda: body(model, ids).block_until_ready()}
    else:
        import tensorflow as tf

        from gpt2_tf import TFGPT2LMHeadModel

        model = TFGPT2LMHeadModel(GPT2Config(), seed=0)
        x = tf.constant(ids)
        full = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
        body = tf.function(lambda x: model.transformer(input_ids=x, use_cache=False).last_hidden_state,
                           jit_compile=True)
        variants = {"blocks + LM head (bench/run.py)": lambda: full(x).numpy(), "blocks only": lambda: body(x).numpy()}
    for f in variants.values():
        f()
    _report(f"forward 1x1024, {args.backend}", _interleaved(variants, args.rounds))


# jaxlib 0.10: --xla_cpu_use_onednn / --xla_cpu_use_xnnpack leave the optimized HLO of these dots unchanged (the
# YNNPACK fusions take them first); an empty YNNPACK fusion type turns those off, and the dots go to Eigen (what TF's
# XLA uses for every dot of two rows or more). TF 2.21's XLA: none of these flags changes its HLO.
def exp_tf_head(args: argparse.Namespace) -> None:
    """TF's tied LM head at the 1x1024 forward ((1, 1024, 768) x E^T, E (50257, 768)), as gpt2_tf writes it and in
    the forms that could reach another Eigen path: logits^T = E h^T, and the vocabulary in 4 chunks."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    E = tf.constant(rng.standard_normal((50257, 768), dtype=np.float32) * 0.02)
    h = tf.constant(rng.standard_normal((1, 1024, 768), dtype=np.float32))
    jit = lambda f: tf.function(f, jit_compile=True)  # noqa: E731
    forms = {
        "h @ E^T, transpose_b (gpt2_tf)": jit(lambda h, E: tf.matmul(h, E, transpose_b=True)),
        "(E @ h^T)^T": jit(lambda h, E: tf.transpose(tf.matmul(E, tf.reshape(h, (-1, 768)), transpose_b=True))[None]),
        "vocab in 4 chunks": jit(lambda h, E: tf.concat(
            [tf.matmul(h, e, transpose_b=True) for e in tf.split(E, [12565, 12564, 12564, 12564])], -1)),
    }
    ref = forms["h @ E^T, transpose_b (gpt2_tf)"](h, E).numpy()
    for f in forms.values():
        assert np.allclose(f(h, E).numpy(), ref, atol=1e-4)
    _report("tf_head: 1024 x 50257 logits", _interleaved({k: (lambda f=f: f(h, E).numpy()) for k, f in forms.items()},
                                                          args.rounds))


FLAG_SETS = {
    "default": "",
    "YNNPACK off": "--xla_cpu_experimental_ynn_fusion_type=",
}


def exp_flags(args: argparse.Namespace) -> None:
    """Idea 2: decode b=8 and forward 1x1024 under XLA_FLAGS variants, each a subprocess running bench/run.py's own
    contender functions for one measurement (flags are process-wide), interleaved rounds, medians."""
    contender = "gpt2_flax" if args.backend == "flax" else "gpt2_tf"
    code = (
        "import json, sys, time; sys.path.insert(0, 'bench'); import run; "
        f"spec = run.Spec(config=run.GPT2_124M, prompt=32, new=64, forward=1024, repeats=1, device='cpu'); "
        f"calls = getattr(run, {contender!r})(spec); out = {{}}\n"
        "for name in ('decode_b8', 'forward_1x1024'):\n"
        "    calls[name](); t = time.perf_counter(); calls[name](); out[name] = time.perf_counter() - t\n"
        "print(json.dumps(out))"
    )
    times: dict[str, list[dict[str, float]]] = {k: [] for k in FLAG_SETS}
    for r in range(args.rounds):
        for name in list(FLAG_SETS) if r % 2 == 0 else list(FLAG_SETS)[::-1]:
            env = dict(os.environ, XLA_FLAGS=FLAG_SETS[name])
            if contender == "gpt2_tf":
                env["KERAS_BACKEND"] = "tensorflow"
            proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=900)
            if proc.returncode:
                raise RuntimeError(proc.stderr[-2000:])
            times[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"# flags, {contender} (load average {os.getloadavg()[0]:.1f}); median over {args.rounds} rounds")
    base = None
    for name, rows in times.items():
        med = {m: sorted(r[m] for r in rows)[len(rows) // 2] for m in rows[0]}
        base = base or med
        b8, fwd = med["decode_b8"], med["forward_1x1024"]
        print(f"{name:12s} decode b=8 {8 * 64 / b8:6.1f} tok/s ({base['decode_b8'] / b8:.2f}x)"
              f"  forward 1x1024 {fwd:6.2f} s ({base['forward_1x1024'] / fwd:.2f}x)")


def _tf_generate_ids(batch: int) -> Any:
    import numpy as np
    import tensorflow as tf

    return tf.constant(np.random.default_rng(batch).integers(0, 50257, (batch, 32)).astype(np.int32))


def exp_tf_forward(args: argparse.Namespace) -> None:
    """gpt2_tf's forward 1x1024 as bench/run.py compiles it (`tf.function(jit_compile=True)`, also what Keras 3's
    `predict` uses: its jit_compile="auto" is XLA on TF), as a plain `tf.function` graph (TF's own kernels: Eigen,
    or oneDNN with TF_ENABLE_ONEDNN_OPTS=1) and eagerly (`model(ids)`). Logits must agree to 1e-4."""
    import numpy as np
    import tensorflow as tf

    from gpt2_core import GPT2Config
    from gpt2_tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(), seed=0)
    x = tf.constant(np.random.default_rng(0).integers(0, 50257, (1, 1024)).astype(np.int32))
    call = lambda x: model(input_ids=x, use_cache=False).logits  # noqa: E731
    fns = {"XLA (bench/run.py)": tf.function(call, jit_compile=True), "tf.function graph": tf.function(call),
           "eager model(ids)": call}
    ref = None
    for f in fns.values():
        out = f(x).numpy()
        ref = out if ref is None else ref
        assert np.abs(out - ref).max() < 1e-4
    _report("tf_forward 1x1024", _interleaved({k: (lambda f=f: f(x).numpy()) for k, f in fns.items()}, args.rounds))


def exp_tf_generate(args: argparse.Namespace) -> None:
    """gpt2_tf generate at --batch, greedy, 64 new tokens, in variants traced apart (one compiled loop each, tokens
    equal): as committed; every Dense bias added as `y - (-b)` (XLA CPU fuses only an add into a one-row dot, as a
    one-workgroup GEMV; a subtraction leaves the dot its multi-workgroup GEMV: check the HLO); the same loop as a
    plain `tf.function` graph, no XLA (TF's MatMul kernels: Eigen, or oneDNN with TF_ENABLE_ONEDNN_OPTS=1)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import gpt2_tf.generation as G
    from gpt2_core import GPT2Config
    from gpt2_tf import TFGPT2LMHeadModel

    mode = {"variant": "committed"}
    dense_call = keras.layers.Dense.call

    def call(self: keras.layers.Dense, inputs: Any, training: Any = None) -> Any:
        if mode["variant"] != "bias not fused" or self.bias is None:
            return dense_call(self, inputs, training)
        return keras.ops.matmul(inputs, self.kernel) - (-self.bias)

    tf_function = tf.function

    def function(fn: Any = None, **kwargs: Any) -> Any:  # G builds its loop with tf.function(..., jit_compile=True)
        if mode["variant"] == "graph (no XLA)":
            kwargs["jit_compile"] = False
        return tf_function(fn, **kwargs)

    keras.layers.Dense.call = call
    model = TFGPT2LMHeadModel(GPT2Config(n_layer=args.layers), seed=0)
    ids = _tf_generate_ids(args.batch)
    mask = tf.ones_like(ids)
    compiled: dict[str, dict] = {k: {} for k in ("committed", "bias not fused", "graph (no XLA)")}

    def run(variant: str) -> np.ndarray:
        mode["variant"] = variant
        G._COMPILED[model] = compiled[variant]
        tf.function = function
        try:
            out = model.generate(ids, attention_mask=mask, max_new_tokens=64, do_sample=False, eos_token_id=[])
        finally:
            tf.function = tf_function
        return np.asarray(out)

    try:
        tokens = [run(k) for k in compiled]
        assert all(np.array_equal(t, tokens[0]) for t in tokens), "tokens differ"
        res = _interleaved({k: (lambda k=k: run(k)) for k in compiled}, args.rounds)
    finally:
        keras.layers.Dense.call = dense_call
    _report(f"tf_generate b={args.batch}, {args.layers} layers, 64 new tokens (tokens equal); "
            f"tok/s = {64 * args.batch} / wall", res)


def exp_tf_profile(args: argparse.Namespace) -> None:
    """Thread time per XLA thunk of one gpt2_tf generate at --batch (or the 1x1024 forward with --forward), from a
    tf.profiler trace (XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, set here before TF starts), grouped by what
    the optimized HLO says each thunk is (a dot by its output shape, a fusion by its kind)."""
    import collections
    import glob
    import re
    import shutil
    import tempfile

    work = tempfile.mkdtemp(prefix="tf_profile_")
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true "
                               f"--xla_dump_to={work}/hlo --xla_dump_hlo_as_text")
    import numpy as np
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from gpt2_core import GPT2Config
    from gpt2_tf import TFGPT2LMHeadModel

    model = TFGPT2LMHeadModel(GPT2Config(n_layer=args.layers), seed=0)
    if args.forward:
        x = tf.constant(np.random.default_rng(0).integers(0, 50257, (1, 1024)).astype(np.int32))
        fn = tf.function(lambda x: model(input_ids=x, use_cache=False).logits, jit_compile=True)
        work_fn = lambda: fn(x).numpy()  # noqa: E731
    else:
        ids = _tf_generate_ids(args.batch)
        work_fn = lambda: model.generate(ids, attention_mask=tf.ones_like(ids), max_new_tokens=64,  # noqa: E731
                                         do_sample=False, eos_token_id=[])
    work_fn()
    tf.profiler.experimental.start(f"{work}/trace")
    t = time.perf_counter()
    work_fn()
    wall = time.perf_counter() - t
    tf.profiler.experimental.stop()
    hlo = "".join(Path(f).read_text() for f in glob.glob(f"{work}/hlo/*cpu_after_optimizations.txt"))
    trace = glob.glob(f"{work}/trace/**/*.xplane.pb", recursive=True)[0]
    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(trace).read_bytes())
    shutil.rmtree(work)
    # what each instruction of the optimized HLO is: name -> (output shape, opcode, fusion kind)
    info = {}
    for row in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.-]+) = (\S+) ([\w-]+)\(", row)
        if m:
            kind = re.search(r"kind=(\w+)", row)
            info[m[1]] = (m[2], m[3], kind[1] if kind else None)
    groups: collections.Counter = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if name not in info or info[name][1] in ("while", "conditional", "call"):  # parents of thunks
                    continue
                shape, op, kind = info[name]
                base = re.sub(r"[.]\d+$", "", name)  # MatMul.97 -> MatMul
                key = f"dot {shape}" if op == "dot" else f"{op} {base}" + (f" ({kind})" if kind else "")
                groups[key] += event.duration_ps / 1e12
    total = sum(groups.values())
    what = "forward 1x1024" if args.forward else f"generate b={args.batch}, 64 new tokens"
    print(f"# tf_profile {what}, {args.layers} layers (load average {os.getloadavg()[0]:.1f}): wall {wall:.2f} s, "
          f"thread time in thunks {total:.2f} s")
    for key, sec in groups.most_common(15):
        print(f"{key[:70]:70s} {sec:8.3f} s  {100 * sec / total:5.1f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment",
                        choices=["split", "threads", "layout", "flax_decode", "forward", "tf_head", "flags",
                                 "tf_forward", "tf_generate", "tf_profile"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backend", choices=["tf", "flax"], default="flax")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--forward", action="store_true")
    args = parser.parse_args(argv)
    globals()[f"exp_{args.experiment}"](args)


if __name__ == "__main__":
    main()
