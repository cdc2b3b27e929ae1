"""gpt2_flax as a drop-in for transformers 4.x Flax code (issue 11, items 1 and 6): `model.params`, pure calls with
`params=` / `dropout_rng=` / `train=` under `jax.jit` and `jax.grad`, `init_cache`, compute vs storage dtype,
orbax checkpoints restored into `nnx.eval_shape`, embedding resizing, gradient checkpointing, `head_mask`,
`num_parameters`, `can_generate`.

Oracles: the torch backend on the same weights (gradients, resizing, head_mask, parameter counts), the float64 NumPy
reference (logits, caches, bf16), gpt2_core.reference.init_params's rule (the traced init), and the model's own nnx
path only where the point is that two of our paths agree (pure call vs stateful call, remat vs no remat).
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TOL, backend_adapter, make_config
from gpt2_core import naming, reference

import jax
import jax.numpy as jnp
from flax import nnx

from gpt2_flax import FlaxGPT2LMHeadModel, FlaxGPT2Model, KVCache
from gpt2_flax.model import MODEL_CLASSES

FLAX = backend_adapter("flax")  # full fp32 matmul precision
TORCH = backend_adapter("torch")


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def pair(head: str = "lm", config=None, seed: int = 0):
    """(flax model, torch model, canonical weights) holding the same random weights."""
    config = config if config is not None else make_config("default")
    canonical = reference.random_params(config, head, seed=seed)
    return FLAX.build(head, config, canonical), TORCH.build(head, config, canonical), canonical


def ids_batch(config, B: int = 2, T: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, config.vocab_size, (B, T)).astype(np.int32)


def canonical_of(tree, model) -> dict[str, np.ndarray]:
    """A params-shaped pytree (e.g. gradients) as canonical NumPy arrays, through gpt2_core.naming."""
    from gpt2_flax.model import _flatten_params

    flat = {k: np.asarray(v, np.float32) for k, v in _flatten_params(tree).items()}
    return naming.from_backend(flat, "flax", model.config, model.head)


# -- model.params ---------------------------------------------------------------------------------------------------


def test_params_is_the_4x_tree_and_assignable():
    flax_model, _, _ = pair("lm", make_config("untied"))
    params = flax_model.params
    C = flax_model.config.n_embd
    body = params["transformer"]
    assert set(body) == {"wte", "wpe", "h", "ln_f"} and set(body["h"]) == {"0", "1"}
    assert set(body["h"]["0"]) == {"ln_1", "attn", "ln_2", "mlp"}
    assert body["h"]["0"]["attn"]["c_attn"]["kernel"].shape == (C, 3 * C)  # [in, out]
    assert set(body["ln_f"]) == {"scale", "bias"} and body["wte"]["embedding"].shape == (97, C)
    assert params["lm_head"]["kernel"].shape == (C, 97)
    assert set(FlaxGPT2Model(make_config("default")).params) == {"wte", "wpe", "h", "ln_f"}  # no "transformer"

    other = reference.random_params(flax_model.config, "lm", seed=5)
    ids = ids_batch(flax_model.config)
    flax_model.params = FLAX.build("lm", flax_model.config, other).params
    want = reference.lm_logits(other, flax_model.config, reference.forward(
        {k: v for k, v in other.items() if k != "lm_head.weight"}, flax_model.config, ids)["last_hidden_state"])
    assert max_diff(flax_model(ids).logits, want) <= TOL

    broken = flax_model.params
    del broken["transformer"]["ln_f"]
    with pytest.raises(ValueError, match=r"missing=\['transformer.ln_f.bias'"):
        flax_model.params = broken
    with pytest.raises(ValueError, match="mismatched shapes"):
        flax_model(ids, params=jax.tree.map(lambda x: x[..., :1], flax_model.params))


# -- pure calls: params=, dropout_rng=, train= ---------------------------------------------------------------------


def _loss_and_grads(model, ids):
    """jax.jit(jax.value_and_grad) of the LM loss over `model.params` (transformers 4.x's training pattern), and the
    bytes the forward keeps for the backward pass (the residuals of jax.vjp, from jax.eval_shape: traced, not run).
    New functions each call, so jit traces the model as it is now (e.g. after gradient_checkpointing_enable)."""

    def loss(params, ids):
        return model(ids, params=params, labels=ids).loss

    step = jax.jit(jax.value_and_grad(loss))
    value, grads = step(model.params, ids)
    residuals = jax.eval_shape(lambda p: jax.vjp(lambda q: loss(q, ids), p)[1], model.params)
    kept = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(residuals))
    return step, value, grads, kept


@pytest.fixture(scope="module")
def lm_grads():
    config = make_config("default")
    canonical = reference.random_params(config, "lm", seed=0)
    model = FLAX.build("lm", config, canonical)
    ids = ids_batch(config, B=4, T=16)
    return (model, canonical, ids, *_loss_and_grads(model, ids))


def test_jit_grad_over_params_equals_nnx_and_torch_gradients(lm_grads):
    """jax.jit(jax.grad(loss)) over model.params == nnx.grad of the stateful model == torch's .grad (1e-4)."""
    import torch

    model, canonical, ids, step, value, grads, _ = lm_grads
    ours = canonical_of(grads, model)

    nnx_grads = nnx.grad(lambda m: m(ids, labels=ids).loss)(model)
    flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx_grads)}
    stateful = naming.from_backend(flat, "flax", model.config, "lm")

    torch_model = TORCH.build("lm", model.config, canonical)
    torch_ids = torch.from_numpy(ids.astype(np.int64))
    torch_loss = torch_model(torch_ids, labels=torch_ids).loss
    torch_loss.backward()
    torch_grads = naming.from_backend(
        {n: p.grad.numpy() for n, p in torch_model.named_parameters()}, "torch", torch_model.config, "lm"
    )
    assert abs(float(value) - torch_loss.item()) <= TOL
    assert set(ours) == set(torch_grads) == set(stateful)
    for key in ours:  # the tied wte gets both its uses' gradients
        assert max_diff(ours[key], stateful[key]) <= 1e-6, key
        assert max_diff(ours[key], torch_grads[key]) <= TOL, key
    # a pure function of params: other params, other loss from the same compiled function; the model unchanged
    np.testing.assert_array_equal(step(model.params, ids)[0], value)
    assert abs(float(step(jax.tree.map(lambda x: x * 0.5, model.params), ids)[0]) - float(value)) > 1e-3
    assert max_diff(model.canonical_state_dict()["wte.weight"], canonical["wte.weight"]) == 0.0


def test_train_and_dropout_rng():
    config = make_config("default", resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model = FLAX.build("lm", config, reference.random_params(config, "lm", seed=1))
    ids = ids_batch(config)

    @jax.jit
    def logits(params, key, ids):
        return model(ids, params=params, dropout_rng=key, train=True).logits

    params = model.params
    a = logits(params, jax.random.key(0), ids)
    np.testing.assert_array_equal(a, logits(params, jax.random.key(0), ids))  # a function of the key
    assert not np.array_equal(a, logits(params, jax.random.key(1), ids))
    eval_logits = model(ids).logits  # the model itself stayed in eval mode, its own streams untouched
    np.testing.assert_array_equal(model(ids, params=params).logits, eval_logits)
    np.testing.assert_array_equal(model(ids, params=params, train=False).logits, eval_logits)
    assert not np.array_equal(a, eval_logits)
    with pytest.raises(ValueError, match="dropout_rng"):
        model(ids, params=params, train=True)
    with pytest.raises(ValueError, match="train and deterministic"):
        model(ids, train=True, deterministic=True)


# -- init_cache / KVCache -----------------------------------------------------------------------------------------


def test_init_cache_as_past_key_values_and_returned_without_use_cache():
    config = make_config("default", use_cache=False)
    canonical = reference.random_params(config, "lm", seed=2)
    model = FLAX.build("lm", config, canonical)
    ids = ids_batch(config, B=2, T=6)
    body = {k: v for k, v in canonical.items() if k != "lm_head.weight"}
    want = reference.lm_logits(canonical, config, reference.forward(body, config, ids)["last_hidden_state"])

    S_max = 12
    cache = model.init_cache(2, S_max)
    assert isinstance(cache, KVCache) and cache.max_length == S_max and int(cache.length) == 0
    mask = jnp.ones((2, S_max), jnp.int32)  # 4.x's extended mask: the whole buffer

    @jax.jit
    def step(params, ids, cache):
        return model(ids, params=params, past_key_values=cache, attention_mask=mask)

    first = step(model.params, ids[:, :4], cache)
    assert isinstance(first.past_key_values, KVCache) and int(first.past_key_values.length) == 4  # use_cache=False
    second = step(model.params, ids[:, 4:], first.past_key_values)
    assert int(second.past_key_values.length) == 6
    got = np.concatenate([first.logits, second.logits], axis=1)
    assert max_diff(got, want) <= TOL
    tup = model(ids[:, :4], past_key_values=cache, return_dict=False)
    assert isinstance(tup[1], KVCache)  # transformers' tuple order: logits, past_key_values


# -- dtype= (compute) and param_dtype= (storage) ---------------------------------------------------------------------

# bf16 logits against the float64 reference: bf16 has 8 significant bits (relative step 2**-8 = 0.0039); through two
# blocks and the tied head of these weights the largest logit error seen was ~0.06 for logits up to ~6.
BF16_TOL = 0.15


def test_dtype_is_compute_dtype_and_param_dtype_storage(tmp_path):
    config = make_config("default")
    canonical = reference.random_params(config, "lm", seed=3)
    FLAX.build("lm", config, canonical).save_pretrained(tmp_path)
    ids = ids_batch(config)
    want = reference.lm_logits(canonical, config, reference.forward(canonical, config, ids)["last_hidden_state"])

    model = FlaxGPT2LMHeadModel.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert model.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(model.params)} == {jnp.dtype(jnp.float32)}  # 4.x: storage unchanged
    logits = model(ids).logits
    assert logits.dtype == jnp.bfloat16 and model.init_cache(1, 8).key[0].dtype == jnp.bfloat16
    err = max_diff(np.asarray(logits, np.float32), want)
    assert 1e-3 < err <= BF16_TOL, err  # really bf16, and close

    stored = FlaxGPT2LMHeadModel.from_pretrained(tmp_path, dtype="bfloat16", param_dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(stored.params)} == {jnp.dtype(jnp.bfloat16)}
    assert max_diff(np.asarray(stored(ids).logits, np.float32), want) <= BF16_TOL

    full = FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    half = full.to_bf16(full.params)  # 4.x helpers: a new tree, the model unchanged
    assert {x.dtype for x in jax.tree.leaves(half)} == {jnp.dtype(jnp.bfloat16)}
    assert {x.dtype for x in jax.tree.leaves(full.params)} == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(full.to_fp32(half))} == {jnp.dtype(jnp.float32)}
    mask = jax.tree.map(lambda x: x.ndim == 2, full.params)  # matrices only
    mixed = full.to_fp16(full.params, mask)
    assert mixed["transformer"]["ln_f"]["scale"].dtype == jnp.float32
    assert mixed["transformer"]["h"]["0"]["mlp"]["c_fc"]["kernel"].dtype == jnp.float16


# -- traced init and orbax ------------------------------------------------------------------------------------------


def test_init_traces_and_orbax_restores_into_eval_shape(tmp_path):
    import orbax.checkpoint as ocp

    config = make_config("default")
    abstract = nnx.eval_shape(lambda: FlaxGPT2LMHeadModel(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract_state))

    model = FlaxGPT2LMHeadModel(config, rngs=nnx.Rngs(0))  # drawn with jax.random: init_params's rule
    p = model.params["transformer"]
    std, L = config.initializer_range, config.n_layer
    assert abs(float(jnp.std(p["wte"]["embedding"])) / std - 1) < 0.05
    assert abs(float(jnp.std(p["h"]["0"]["attn"]["c_attn"]["kernel"])) / std - 1) < 0.05
    assert abs(float(jnp.std(p["h"]["1"]["mlp"]["c_proj"]["kernel"])) / (std / np.sqrt(2 * L)) - 1) < 0.05
    assert not np.any(p["h"]["0"]["attn"]["c_attn"]["bias"]) and np.all(p["ln_f"]["scale"] == 1)
    from_config = FlaxGPT2LMHeadModel.from_config(config, seed=4)  # the trainers' init: exactly init_params
    np.testing.assert_array_equal(from_config.canonical_state_dict()["wte.weight"],
                                  reference.init_params(config, "lm", 4)["wte.weight"])

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "state", nnx.state(from_config))
    checkpointer.wait_until_finished()
    restored = nnx.merge(graphdef, checkpointer.restore(tmp_path / "state", abstract_state))
    assert isinstance(restored, FlaxGPT2LMHeadModel)
    want = from_config.canonical_state_dict()
    got = restored.canonical_state_dict()
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)


# -- embeddings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("config_name", ["default", "untied"])
def test_resize_token_embeddings_as_torch(config_name):
    flax_model, torch_model, _ = pair("lm", make_config(config_name))
    V = flax_model.config.vocab_size
    assert flax_model.resize_token_embeddings(V + 5, pad_to_multiple_of=4) is flax_model.get_input_embeddings()
    torch_model.resize_token_embeddings(V + 5, pad_to_multiple_of=4)
    assert flax_model.config.vocab_size == torch_model.config.vocab_size == 104
    ours, theirs = flax_model.canonical_state_dict(), torch_model.canonical_state_dict()
    assert set(ours) == set(theirs)
    for key in ours:  # old rows copied, new rows both ~ the old rows' mean (covariance * 1e-9: ~1e-5 apart)
        assert ours[key].shape == theirs[key].shape, key
        np.testing.assert_array_equal(ours[key][:V], theirs[key][:V])
        assert max_diff(ours[key], theirs[key]) <= TOL, key
    old_ids, new_ids = np.array([[1, 2, 3, 5, 8]], np.int32), np.array([[1, 2, V, V + 3, 103]], np.int32)
    got, want = flax_model(old_ids).logits, TORCH.forward(torch_model, "lm", input_ids=old_ids)["logits"]
    assert max_diff(got[..., :V], want[..., :V]) <= TOL
    # the new rows (tokens and untied head columns) are ~1e-5 apart: their logits agree to 1e-3
    got, want = flax_model(new_ids).logits, TORCH.forward(torch_model, "lm", input_ids=new_ids)["logits"]
    assert max_diff(got, want) <= 1e-3
    head = flax_model.get_output_embeddings()
    assert head is (flax_model.lm_head if config_name == "untied" else flax_model.transformer.wte)

    flax_model.resize_token_embeddings(V - 7)  # shrink: the first rows kept
    assert flax_model.params["transformer"]["wte"]["embedding"].shape == (V - 7, 32)
    np.testing.assert_array_equal(flax_model.canonical_state_dict()["wte.weight"], ours["wte.weight"][: V - 7])
    with pytest.raises(ValueError, match="new_num_tokens"):
        flax_model.resize_token_embeddings(0)


def test_embedding_accessors_num_parameters_can_generate():
    for name in ("default", "untied"):
        flax_model, torch_model, _ = pair("lm", make_config(name))
        for kwargs in ({}, {"exclude_embeddings": True}, {"only_trainable": True}):
            assert flax_model.num_parameters(**kwargs) == torch_model.num_parameters(**kwargs), (name, kwargs)
    assert FlaxGPT2LMHeadModel.can_generate()
    assert not any(MODEL_CLASSES[h].can_generate() for h in ("base", "double", "qa", "seqcls", "tokcls"))
    config = make_config("default")
    model = MODEL_CLASSES["seqcls"](config.copy(), rngs=nnx.Rngs(0))
    assert model.get_output_embeddings() is None and model.get_input_embeddings() is model.transformer.wte
    new = nnx.Embed(120, config.n_embd, rngs=nnx.Rngs(1))
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new and model.config.vocab_size == 120
    with pytest.raises(ValueError, match="n_embd"):
        model.set_input_embeddings(nnx.Embed(10, 7, rngs=nnx.Rngs(1)))


# -- gradient checkpointing ---------------------------------------------------------------------------------------


def test_gradient_checkpointing_same_gradients_less_memory(lm_grads):
    model, canonical, ids, _, value, grads, kept = lm_grads
    remat = FLAX.build("lm", model.config, canonical)
    remat.gradient_checkpointing_enable()
    assert remat.is_gradient_checkpointing and not model.is_gradient_checkpointing
    _, value_remat, grads_remat, kept_remat = _loss_and_grads(remat, ids)
    assert abs(float(value) - float(value_remat)) <= 1e-6
    assert max(max_diff(a, b) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat))) <= 1e-6
    # what the forward keeps for the backward pass: measured 0.26 MB instead of 0.67 MB here
    assert kept_remat < 0.6 * kept, (kept_remat, kept)
    assert remat(ids).past_key_values is None  # no cache while checkpointing (transformers' rule)
    remat.gradient_checkpointing_disable()
    assert remat(ids).past_key_values is not None


# -- head_mask, config output flags -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["per_head", "per_layer"])
def test_head_mask_as_transformers_4(shape):
    """transformers 4.x multiplied each head's attention probabilities by head_mask (after dropout). Oracle: the
    float64 reference with the rows of each c_proj that read head h scaled by its mask value."""
    config = make_config("default")
    canonical = reference.random_params(config, "lm", seed=0)
    model = FLAX.build("lm", config, canonical)
    L, N, H = config.n_layer, config.n_head, config.head_dim
    mask = np.random.default_rng(3).random((N,) if shape == "per_head" else (L, N)).astype(np.float32)
    mask[..., 1] = 0.0  # one head fully masked
    per_layer = np.broadcast_to(mask, (L, N))
    scaled = dict(canonical)
    for layer in range(L):  # c_proj [in, out]: its rows are the heads' outputs, head-major
        key = f"h.{layer}.attn.c_proj.weight"
        scaled[key] = canonical[key] * np.repeat(per_layer[layer], H)[:, None]
    ids = ids_batch(config)
    ref = reference.forward(scaled, config, ids)  # c_proj comes after the probabilities: they are unmasked here
    got = model(ids, head_mask=mask, output_attentions=True)
    assert max_diff(got.logits, reference.lm_logits(scaled, config, ref["last_hidden_state"])) <= TOL
    for layer in range(L):  # the returned attentions are the masked probabilities, as in 4.x
        want = ref["attentions"][layer] * per_layer[layer][None, :, None, None]
        assert max_diff(got.attentions[layer], want) <= TOL
    with pytest.raises(ValueError, match="head_mask"):
        model(ids, head_mask=np.ones(N + 1, np.float32))


def test_config_output_flags_are_honoured():
    config = make_config("default")
    model = FLAX.build("lm", config, reference.random_params(config, "lm", seed=7))
    ids = ids_batch(config)
    model.config.output_hidden_states = True
    model.config.output_attentions = True
    out = model(ids)
    assert len(out.hidden_states) == config.n_layer + 1 and len(out.attentions) == config.n_layer
    assert model(ids, output_hidden_states=False).hidden_states is None  # the call wins
