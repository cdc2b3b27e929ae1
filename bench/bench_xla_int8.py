"""Weight-only int8 vs fp32 dot on XLA CPU (JAX, TF), 768x3072 and 768x50257 at batch 1 and 8.

Interleaved A/B: each round runs every variant once (a block of `reps` calls), rounds repeated; medians of the
per-call time, ratio = variant / fp32 (lower is faster). Usage: python bench/bench_xla_int8.py jax|tf
"""
import os, sys, time, statistics, json
import numpy as np

which = sys.argv[1]
ROUNDS = int(os.environ.get("ROUNDS", 7))
rng = np.random.default_rng(0)


def timeit(fn, reps):
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t) / reps


def run(variants, reps):
    times = {k: [] for k in variants}
    budget = {}
    for k, fn in variants.items():
        fn()  # compile / warm
        t = time.perf_counter(); fn(); t = time.perf_counter() - t
        budget[k] = max(1, min(reps, int(0.15 / max(t, 1e-6))))  # about 0.15 s per variant per round
    for _ in range(ROUNDS):
        for k, fn in variants.items():
            times[k].append(timeit(fn, budget[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: (med[k] * 1e6, med[k] / med["fp32"]) for k in med}


out = {}
for (K, N) in ((768, 3072), (768, 50257)):
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.02
    scale = np.abs(w).max(axis=0, keepdims=True) / 127  # (1, N)
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    for B in (1, 8):
        x = rng.standard_normal((B, K)).astype(np.float32)
        reps = 200 if N == 3072 else 20
        if which == "jax":
            import jax, jax.numpy as jnp
            from jax import lax
            jx, jw, jq, js = map(jax.device_put, (x, w, q, scale))
            f32 = jax.jit(lambda x, w: jnp.dot(x, w))
            deq = jax.jit(lambda x, q, s: jnp.dot(x, q.astype(jnp.float32) * s))
            deq_after = jax.jit(lambda x, q, s: jnp.dot(x, q.astype(jnp.float32)) * s)
            mixed = jax.jit(lambda x, q, s: lax.dot_general(x, q, (((1,), (0,)), ((), ())),
                                                            preferred_element_type=jnp.float32) * s)
            def w8a8(x, q, s):
                xs = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 127
                xq = jnp.round(x / xs).astype(jnp.int8)
                acc = lax.dot_general(xq, q, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
                return acc.astype(jnp.float32) * xs * s
            w8a8 = jax.jit(w8a8)
            variants = {
                "fp32": lambda: f32(jx, jw).block_until_ready(),
                "dequant_in_jit": lambda: deq(jx, jq, js).block_until_ready(),
                "convert_dot_then_scale": lambda: deq_after(jx, jq, js).block_until_ready(),
                "dot_general_f32xs8": lambda: mixed(jx, jq, js).block_until_ready(),
                "w8a8_s8xs8_s32": lambda: w8a8(jx, jq, js).block_until_ready(),
            }
            # correctness of each variant against the dequantized fp32 product
            ref = x @ (q.astype(np.float32) * scale)
            for name, fn in (("dequant_in_jit", deq), ("convert_dot_then_scale", deq_after), ("dot_general_f32xs8", mixed)):
                err = float(np.abs(np.asarray(fn(jx, jq, js)) - ref).max())
                assert err < 1e-3, (name, err)
        else:
            import tensorflow as tf
            try:
                tf.config.threading.set_intra_op_parallelism_threads(1)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:
                pass
            tx, tw, tq, ts = (tf.constant(a) for a in (x, w, q, scale))
            f32 = tf.function(lambda x, w: tf.matmul(x, w), jit_compile=True)
            f32_nojit = tf.function(lambda x, w: tf.matmul(x, w))
            deq = tf.function(lambda x, q, s: tf.matmul(x, tf.cast(q, tf.float32) * s), jit_compile=True)
            deq_after = tf.function(lambda x, q, s: tf.matmul(x, tf.cast(q, tf.float32)) * s, jit_compile=True)
            deq_nojit = tf.function(lambda x, q, s: tf.matmul(x, tf.cast(q, tf.float32)) * s)
            # TF's own quantized kernel (per-tensor ranges only: quint8 activations x qint8 weights -> qint32)
            wmin, wmax = float(w.min()), float(w.max())
            wq = tf.quantization.quantize(tw, wmin, wmax, tf.qint8, mode="SCALED")
            def qmm(x):
                xq = tf.quantization.quantize(x, tf.reduce_min(x), tf.reduce_max(x), tf.quint8)
                y, ymin, ymax = tf.raw_ops.QuantizedMatMul(a=xq.output, b=wq.output, min_a=xq.output_min,
                                                           max_a=xq.output_max, min_b=wq.output_min,
                                                           max_b=wq.output_max, Toutput=tf.qint32)
                return tf.quantization.dequantize(y, ymin, ymax, mode="MIN_FIRST")
            qmm = tf.function(qmm)
            variants = {
                "fp32": lambda: f32(tx, tw).numpy(),
                "fp32_no_xla": lambda: f32_nojit(tx, tw).numpy(),
                "dequant_in_xla": lambda: deq(tx, tq, ts).numpy(),
                "convert_dot_then_scale_xla": lambda: deq_after(tx, tq, ts).numpy(),
                "convert_dot_then_scale_no_xla": lambda: deq_nojit(tx, tq, ts).numpy(),
            }
            try:
                qmm(tx).numpy()
                variants["tf_QuantizedMatMul_per_tensor"] = lambda: qmm(tx).numpy()
            except Exception as e:  # noqa: BLE001
                out[f"QuantizedMatMul {K}x{N}"] = f"unavailable: {type(e).__name__}: {str(e)[:160]}"
        res = run(variants, reps)
        out[f"{K}x{N} b={B}"] = {k: f"{us:.0f} us ({r:.2f}x)" for k, (us, r) in res.items()}
        print(f"{which} {K}x{N} b={B}:", json.dumps(out[f'{K}x{N} b={B}']), flush=True)
print(json.dumps(out, indent=1))
