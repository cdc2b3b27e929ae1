"""Where gpt2_flax's greedy decoding loses time against gpt2_tf and a hand-built minimal JAX decoder, in one process
(interleaved rounds, the order reversed every other round, medians): the figures of docs/performance.md's
"JAX/Flax: batch-1 decoding profile" follow-up (issue 13).

    python bench/bench_flax_decode.py parts              # generate at 1 and N new tokens: prefill vs per step
    python bench/bench_flax_decode.py parts --no-tf --cond   # + `minimal` with its forward under a lax.cond
    python bench/bench_flax_decode.py parts --batch 8
    python bench/bench_flax_decode.py parts --layers 2   # a smaller model, same widths
    python bench/bench_flax_decode.py ab                 # gpt2_flax/generation.py at HEAD vs the working tree
    python bench/bench_flax_decode.py ab --rev HEAD~3 --batch 8
    python bench/bench_flax_decode.py ab --paired --width 48 --new 8 --rounds 41   # the fixed cost of a call
    python bench/bench_flax_decode.py bias --rounds 7     # block products with/without the bias add, JAX and TF

`parts` contenders: `flax` (gpt2_flax `generate`), `tf` (gpt2_tf `generate`, same weights: both load
`gpt2_core.reference.init_params(config, seed=0)`) and `minimal` (prefill + a `lax.while_loop` of forward-then-argmax
written in plain jax.numpy on the same weights: the bound for a JAX program of this shape). `ab`: the committed
gpt2_flax/generation.py (loaded from git) against the working tree on one model; `--paired` gives per-round ratios.
GPT-2 124M shapes (12 x 768, vocab 50257), fp32, prompt 32, greedy, no eos. Each line: median wall time of a call,
median process CPU time, speed against the first line (> 1 is faster). On a shared machine only ratios mean anything.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_xla_decode import _interleaved, _report, _rounds  # noqa: E402


def _paired(variants: dict[str, Callable[[], Any]], rounds: int) -> None:
    """Each round runs every variant once (the order reversed every other round); prints per variant the median
    wall and CPU time and the median, min and max over rounds of the first variant's wall time divided by this
    variant's in the same round (> 1: faster), which drifting load disturbs less than a ratio of medians."""
    import statistics

    names = list(variants)
    wall, cpu = _rounds(variants, rounds)
    print(f"# {rounds} paired rounds (load average {os.getloadavg()[0]:.1f})")
    for k in names:
        ratios = [a / b for a, b in zip(wall[names[0]], wall[k])]
        print(f"{k:36s} wall {statistics.median(wall[k]) * 1e3:8.1f} ms  cpu {statistics.median(cpu[k]) * 1e3:8.1f} ms"
              f"  speed {statistics.median(ratios):5.3f}x (rounds {min(ratios):5.3f}-{max(ratios):5.3f})")
    sys.stdout.flush()


def _config(layers: int, width: int = 768) -> Any:
    from gpt2_core import GPT2Config

    return GPT2Config(vocab_size=50257, n_positions=1024, n_embd=width, n_layer=layers, n_head=12)


def minimal_generate(sd: dict, config: Any, cond: bool = False) -> Callable:
    """A hand-built greedy decoder: (B, T) ids, n new tokens -> (B, n) tokens. Plain jnp, per-layer (B, N, S, H) cache
    buffers written with dynamic_update_slice, forward then argmax in the loop body (no cond), weights an argument.
    `cond=True`: the loop body runs the forward under a `lax.cond` (as gpt2_flax's loop before this change)."""
    import jax
    import jax.numpy as jnp

    L, N, C = config.n_layer, config.n_head, config.n_embd
    H = C // N
    eps = config.layer_norm_epsilon

    def ln(x, g, b):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + eps) * g + b

    def gelu(x):
        return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))

    def forward(p, ids, pos0, ks, vs):
        B, T = ids.shape
        S = ks[0].shape[2]
        x = p["wte.weight"][ids] + p["wpe.weight"][pos0 + jnp.arange(T)][None]
        causal = jnp.arange(S)[None, :] <= (pos0 + jnp.arange(T))[:, None]  # (T, S)
        new_k, new_v = [], []
        for i in range(L):
            w = lambda name: p[f"h.{i}.{name}"]  # noqa: E731
            h = ln(x, w("ln_1.weight"), w("ln_1.bias"))
            qkv = h @ w("attn.c_attn.weight") + w("attn.c_attn.bias")
            q, k, v = (t.reshape(B, T, N, H).transpose(0, 2, 1, 3) for t in jnp.split(qkv, 3, axis=-1))
            K = jax.lax.dynamic_update_slice(ks[i], k, (0, 0, pos0, 0))
            V = jax.lax.dynamic_update_slice(vs[i], v, (0, 0, pos0, 0))
            att = jnp.einsum("bnth,bnsh->bnts", q, K) / math.sqrt(H)
            att = jax.nn.softmax(jnp.where(causal, att, jnp.finfo(att.dtype).min), axis=-1)
            y = jnp.einsum("bnts,bnsh->bnth", att, V).transpose(0, 2, 1, 3).reshape(B, T, C)
            x = x + y @ w("attn.c_proj.weight") + w("attn.c_proj.bias")
            h = ln(x, w("ln_2.weight"), w("ln_2.bias"))
            x = x + gelu(h @ w("mlp.c_fc.weight") + w("mlp.c_fc.bias")) @ w("mlp.c_proj.weight") + w("mlp.c_proj.bias")
            new_k.append(K)
            new_v.append(V)
        x = ln(x[:, -1], p["ln_f.weight"], p["ln_f.bias"])
        logits = jax.lax.dot_general(x, p["wte.weight"], (((1,), (1,)), ((), ())))  # (B, V)
        return logits, tuple(new_k), tuple(new_v)

    @functools.partial(jax.jit, static_argnames=("n", "S"))
    def run(p, ids, *, n, S):
        B, T = ids.shape
        zeros = tuple(jnp.zeros((B, N, S, H), jnp.float32) for _ in range(L))
        logits, ks, vs = forward(p, ids, 0, zeros, zeros)
        tok = jnp.argmax(logits, -1).astype(jnp.int32)
        out = jnp.zeros((B, n), jnp.int32).at[:, 0].set(tok)

        def body(c):
            i, tok, ks, vs, out = c
            if cond:
                logits, ks, vs = jax.lax.cond(i < n, lambda: forward(p, tok[:, None], T + i - 1, ks, vs),
                                              lambda: (jnp.zeros((B, config.vocab_size)), ks, vs))
            else:
                logits, ks, vs = forward(p, tok[:, None], T + i - 1, ks, vs)
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            return i + 1, tok, ks, vs, jax.lax.dynamic_update_slice(out, tok[:, None], (0, i))

        return jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(1), tok, ks, vs, out))[4]

    params = {k: jnp.asarray(v) for k, v in sd.items()}
    return lambda ids, n, S: run(params, ids, n=n, S=S)


def exp_parts(args: argparse.Namespace) -> None:
    """generate at 1 and N new tokens for each contender: the prefill (+ per-call overhead) and the per-step time."""
    import numpy as np

    from gpt2_core.generation import plan_decoding
    from gpt2_flax import FlaxGPT2LMHeadModel

    config = _config(args.layers)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    N = args.new
    S = plan_decoding(config, args.batch, args.prompt, N).cache_length
    flax_model = FlaxGPT2LMHeadModel.from_config(config, seed=0)
    kw = dict(do_sample=False, eos_token_id=[])
    calls: dict[str, Callable[[int], Any]] = {
        "flax": lambda n: np.asarray(flax_model.generate(ids, attention_mask=mask, max_new_tokens=n, **kw).sequences),
    }
    minimal = minimal_generate(flax_model.canonical_state_dict(), config)
    calls["minimal"] = lambda n: np.concatenate([ids, np.asarray(minimal(ids, n, S))], axis=1)
    if args.cond:
        minimal_cond = minimal_generate(flax_model.canonical_state_dict(), config, cond=True)
        calls["minimal_cond"] = lambda n: np.concatenate([ids, np.asarray(minimal_cond(ids, n, S))], axis=1)
    if not args.no_tf:
        import tensorflow as tf

        from gpt2_tf import TFGPT2LMHeadModel

        tf.config.experimental.enable_tensor_float_32_execution(False)
        tf_model = TFGPT2LMHeadModel(config, seed=0)
        def tf_call(n: int) -> np.ndarray:
            result = tf_model.generate(ids, attention_mask=mask, max_new_tokens=n, **kw)
            return np.asarray(getattr(result, "sequences", result))

        calls["tf"] = tf_call
    ref = None
    for name, call in calls.items():
        for n in (1, N):
            out = call(n)  # warm-up: tracing and compilation
        same = "reference" if ref is None else f"tokens equal to flax: {bool(np.array_equal(out, ref))}"
        ref = out if ref is None else ref
        print(f"{name}: {same}")
    variants = {f"{name}, {n} new": functools.partial(call, n) for name, call in calls.items() for n in (1, N)}
    res = _interleaved(variants, args.rounds)
    _report(f"parts: b={args.batch}, {config.n_layer} layers, prompt {args.prompt}, calls", res, 1e3, "ms")
    print("# per step ((t_N - t_1) / (N - 1), wall and CPU) and the 1-token call (prefill + per-call overhead)")
    base = None
    for name in calls:
        (w1, c1), (wn, cn) = res[f"{name}, 1 new"], res[f"{name}, {N} new"]
        step, cpu_step = (wn - w1) / (N - 1), (cn - c1) / (N - 1)
        base = step if base is None else base
        print(f"{name:12s} step {step * 1e3:7.2f} ms ({base / step:4.2f}x, cpu {cpu_step * 1e3:6.2f} ms)  "
              f"1-token call {w1 * 1e3:7.1f} ms  "
              f"tok/s {args.batch * N / wn:6.1f}")


def _module_at(rev: str, path: str, name: str) -> Any:
    """`path` as it is at git revision `rev`, imported as module `name` (the A/B's baseline)."""
    import importlib.util
    import subprocess
    import tempfile

    source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True)
    file = Path(tempfile.mkdtemp(prefix="bench-flax-")) / f"{name}.py"
    file.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def exp_ab(args: argparse.Namespace) -> None:
    """gpt2_flax/generation.py at `--rev` (default HEAD) against the working tree, on one model: whole calls at 1 and
    N new tokens (tokens checked equal), per step and per call."""
    import numpy as np

    import gpt2_flax.generation as current
    from gpt2_flax import FlaxGPT2LMHeadModel

    base = _module_at(args.rev, "gpt2_flax/generation.py", "generation_base")
    config = _config(args.layers, args.width)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    model = FlaxGPT2LMHeadModel.from_config(config, seed=0)
    kw = dict(attention_mask=mask, do_sample=False, eos_token_id=[], num_beams=args.beams)
    N = args.new
    calls = {
        f"{args.rev}": lambda n: np.asarray(base.generate(model, ids, max_new_tokens=n, **kw).sequences),
        "working tree": lambda n: np.asarray(current.generate(model, ids, max_new_tokens=n, **kw).sequences),
    }
    outs = {name: [call(1), call(N)][1] for name, call in calls.items()}
    print("tokens equal:", bool(np.array_equal(*outs.values())))
    if args.paired:
        print(f"# ab: b={args.batch}, beams {args.beams}, {config.n_layer} layers, prompt {args.prompt}, {N} new")
        _paired({name: functools.partial(call, N) for name, call in calls.items()}, args.rounds)
        return
    variants = {f"{name}, {n} new": functools.partial(call, n) for name, call in calls.items() for n in (1, N)}
    res = _interleaved(variants, args.rounds)
    _report(f"ab: b={args.batch}, beams {args.beams}, {config.n_layer} layers, prompt {args.prompt}", res, 1e3, "ms")
    first = None
    for name in calls:
        (w1, c1), (wn, cn) = res[f"{name}, 1 new"], res[f"{name}, {N} new"]
        step, cpu_step = (wn - w1) / (N - 1), (cn - c1) / (N - 1)
        first = (step, wn) if first is None else first
        print(f"{name:14s} step {step * 1e3:7.2f} ms ({first[0] / step:4.2f}x, cpu {cpu_step * 1e3:6.2f} ms)  "
              f"{N}-token call {wn * 1e3:7.1f} ms ({first[1] / wn:4.2f}x)  1-token call {w1 * 1e3:7.1f} ms")


def exp_bias(args: argparse.Namespace) -> None:
    """The 48 block products of one step (x -> tanh(fold(x @ W [+ b]))) x 16 steps in one jitted loop, JAX and TF,
    with and without the bias add: TF's XLA fuses the add into the product (one-workgroup `..._with_addend_1` GEMV on
    the calling thread), jaxlib's never does (the multi-workgroup GEMV, then a loop fusion)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import tensorflow as tf

    from bench_xla_decode import SHAPES, STEPS, _weights

    ws = _weights()
    bs = [np.random.default_rng(2).standard_normal(s[1]).astype(np.float32) * 0.02 for s in SHAPES]
    x0 = np.random.default_rng(1).standard_normal((1, 768)).astype(np.float32)
    jw, jb = [jnp.asarray(w) for w in ws], [jnp.asarray(b) for b in bs]
    tw, tb = [tf.constant(w) for w in ws], [tf.constant(b) for b in bs]

    def jax_chain(bias: bool) -> Callable:
        def one(x):
            for w, b in zip(jw, jb):
                y = jnp.tile(x, (1, w.shape[0] // 768)) @ w
                x = jnp.tanh((y + b if bias else y).reshape(1, -1, 768).sum(1))
            return x

        f = jax.jit(lambda x: jax.lax.fori_loop(0, STEPS, lambda i, x: one(x), x))
        return lambda: np.asarray(f(x0))

    def tf_chain(bias: bool) -> Callable:
        @tf.function(jit_compile=True)
        def run(x):
            def one(i, x):
                for w, b in zip(tw, tb):
                    y = tf.matmul(tf.tile(x, (1, w.shape[0] // 768)), w)
                    x = tf.tanh(tf.reduce_sum(tf.reshape(y + b if bias else y, (1, -1, 768)), 1))
                return i + 1, x

            return tf.while_loop(lambda i, x: i < STEPS, one, (tf.constant(0), x))[1]

        return lambda: run(tf.constant(x0)).numpy()

    variants = {}
    for bias in (False, True):
        variants[f"jax, bias={bias}"], variants[f"tf, bias={bias}"] = jax_chain(bias), tf_chain(bias)
        assert np.allclose(variants[f"jax, bias={bias}"](), variants[f"tf, bias={bias}"](), atol=1e-5)
    res = _interleaved(variants, args.rounds)
    _report("bias: 48 block products x 16 steps, per step", {k: (w / STEPS, c / STEPS) for k, (w, c) in res.items()},
            1e3, "ms")


EXPERIMENTS = {"parts": exp_parts, "ab": exp_ab, "bias": exp_bias}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=tuple(EXPERIMENTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768, help="ab: n_embd (48: the per-call overhead alone)")
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--no-tf", action="store_true", help="leave gpt2_tf out")
    parser.add_argument("--cond", action="store_true", help="add `minimal` with its forward under a lax.cond")
    parser.add_argument("--rev", default="HEAD", help="ab: the git revision of gpt2_flax/generation.py to compare")
    parser.add_argument("--beams", type=int, default=1, help="ab: num_beams")
    parser.add_argument("--paired", action="store_true", help="ab: only N-token calls, per-round paired ratios")
    args = parser.parse_args()
    EXPERIMENTS[args.experiment](args)


if __name__ == "__main__":
    main()
