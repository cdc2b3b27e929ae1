"""gpt2_core: config, naming table, reference decisions, hub IO, sampling rules. No framework needed except as an
oracle (transformers' config defaults and logits warpers)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, make_config
from fixtures.hub_cache import make_hub_cache, no_network  # noqa: F401 - a fixture
from gpt2_core import hub, naming, reference
from gpt2_core.config import PRESETS, GPT2Config
from gpt2_core.generation import make_generation_config, process_logits


# Layers: gpt2_core <- weights_convert <- backends <- apps. gpt2_core imports none of these, at module level or lazily.
FORBIDDEN_IN_CORE = ("weights_convert", "gpt2_torch", "gpt2_tf", "gpt2_flax", "gpt2_apps",
                     "torch", "tensorflow", "jax", "flax", "keras")


def test_importing_every_gpt2_core_module_imports_no_framework_or_converter():
    code = (
        "import importlib, pkgutil, sys, gpt2_core;"
        "names = [m.name for m in pkgutil.walk_packages(gpt2_core.__path__, 'gpt2_core.')];"
        "[importlib.import_module(n) for n in names];"
        "from gpt2_core import GPT2Tokenizer;"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_IN_CORE!r});"
        "assert not bad, bad;"
        "assert 'gpt2_core.hub' in names and 'gpt2_core.naming' in names, names"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every module an AST imports, at any depth (lazy imports in functions included), and
    importlib.import_module / __import__ calls with a constant name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


# The one exception: the tokenizer's `return_tensors="pt"/"tf"/"jax"` hands its arrays to the framework the caller
# asked for (transformers' API), importing that framework then; it never imports a backend or the converter.
FRAMEWORK_IMPORTS_ALLOWED = ("tokenization",)
FRAMEWORKS = ("torch", "tensorflow", "jax", "flax", "keras")


def test_gpt2_core_has_no_lazy_imports_of_frameworks_or_converter():
    bad = []
    for path in sorted((REPO / "gpt2_core").rglob("*.py")):
        for line, module in _imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            top = module.split(".")[0]
            if top in FRAMEWORKS and path.stem.startswith(FRAMEWORK_IMPORTS_ALLOWED):
                continue
            if top in FORBIDDEN_IN_CORE:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert not bad, bad


# -- config ------------------------------------------------------------------------------------------------------


def test_config_defaults_equal_transformers():
    import transformers
    theirs = transformers.GPT2Config().to_dict()
    ours = GPT2Config().to_dict()
    for key in ["vocab_size", "n_positions", "n_embd", "n_layer", "n_head", "n_inner", "activation_function",
                "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon", "initializer_range", "summary_type",
                "summary_use_proj", "summary_activation", "summary_proj_to_labels", "summary_first_dropout",
                "scale_attn_weights", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
                "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
                "tie_word_embeddings"]:
        assert ours[key] == theirs[key], key
    assert GPT2Config().num_labels == transformers.GPT2Config().num_labels


def test_config_json_round_trip_with_transformers(tmp_path):
    import transformers
    transformers.GPT2Config(n_layer=3, n_embd=48, n_head=6, num_labels=4, some_custom_key="kept").save_pretrained(tmp_path)
    ours = GPT2Config.from_pretrained(tmp_path)
    assert (ours.n_layer, ours.n_embd, ours.n_head, ours.num_labels) == (3, 48, 6, 4)
    assert ours.some_custom_key == "kept" and ours.hidden_size == 48 and ours.num_attention_heads == 6
    ours.save_pretrained(tmp_path / "again")
    data = json.loads((tmp_path / "again" / "config.json").read_text())
    assert data["some_custom_key"] == "kept" and data["model_type"] == "gpt2"
    back = transformers.GPT2Config.from_pretrained(tmp_path / "again")
    assert (back.n_layer, back.n_embd, back.num_labels) == (3, 48, 4)


def test_presets():
    assert GPT2Config.from_preset("gpt2").n_layer == 12
    xl = GPT2Config.from_preset("openai-community/gpt2-xl")
    assert (xl.n_embd, xl.n_layer, xl.n_head) == (1600, 48, 25)
    assert GPT2Config.from_preset("distilgpt2").n_layer == 6
    assert set(PRESETS) == {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}
    with pytest.raises(ValueError, match="Unknown preset"):
        GPT2Config.from_preset("gpt3")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_embd=100, n_head=12), r"n_embd must be divisible by n_head. Received: n_embd=100, n_head=12"),
        (dict(activation_function="gelu_newer"), r"Unknown activation_function"),
        (dict(n_layer=0), r"`n_layer` must be a positive integer"),
        (dict(attn_pdrop=1.5), r"`attn_pdrop` must be in \[0, 1\)"),
        (dict(summary_type="attn"), r"Unsupported summary_type"),
        (dict(hidden_size=64, n_embd=32), r"`hidden_size` is another name for `n_embd`"),
        (dict(num_labels=3, id2label={0: "a"}), r"num_labels disagrees with id2label"),
    ],
)
def test_config_rejects_inconsistent(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPT2Config(**kwargs)


def test_config_rejects_other_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="not a GPT-2 config"):
        GPT2Config.from_pretrained(tmp_path)


# -- naming ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", naming.BACKENDS)
@pytest.mark.parametrize("head", naming.HEADS)
def test_naming_round_trip(backend_name, head):
    config = make_config("untied", add_cross_attention=True)
    params = reference.random_params(config, head, seed=0)
    there = naming.to_backend(params, backend_name, config, head)
    assert len(there) == len(params)
    back = naming.from_backend(there, backend_name, config, head)
    assert set(back) == set(params)
    for k in params:
        np.testing.assert_array_equal(back[k], params[k])


def test_naming_layouts():
    config = make_config("untied")
    path, t = naming.backend_path("h.1.attn.c_attn.weight", "torch", config)
    assert (path, t) == ("h.1.attn.c_attn.weight", True)
    assert naming.backend_path("h.1.ln_2.weight", "tf", config) == ("h.1.ln_2.gamma", False)
    assert naming.backend_path("wte.weight", "flax", config) == ("wte.embedding", False)
    assert naming.backend_path("lm_head.weight", "flax", config, "lm") == ("lm_head.kernel", True)
    assert naming.backend_path("score.weight", "torch", config, "seqcls") == ("score.weight", False)


def test_hub_state_dict_prefixes_and_ties():
    config = make_config("default")
    params = reference.random_params(config, "lm", seed=0)
    hub_sd = naming.to_hub_state_dict(params, "lm")
    assert "transformer.wte.weight" in hub_sd and "lm_head.weight" not in hub_sd
    hub_sd["lm_head.weight"] = hub_sd["transformer.wte.weight"]  # some files store the tied copy
    hub_sd["transformer.h.0.attn.masked_bias"] = np.zeros(())
    canon, missing = naming.from_hub_state_dict(hub_sd, config, "lm")
    assert not missing and set(canon) == set(params)
    base, missing = naming.from_hub_state_dict(hub_sd, config, "base")  # a task checkpoint into GPT2Model
    assert not missing and "lm_head.weight" not in base
    _, missing = naming.from_hub_state_dict(naming.to_hub_state_dict(base), config, "qa")
    assert missing == ["qa_outputs.weight", "qa_outputs.bias"]
    with pytest.raises(ValueError, match="missing keys"):
        naming.from_hub_state_dict(naming.to_hub_state_dict(base), config, "qa", allow_missing_head=False)


# -- reference decisions -------------------------------------------------------------------------------------------


def test_position_ids_rule():
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(
        reference.position_ids_from_attention_mask(mask, 5),
        [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]],
    )
    np.testing.assert_array_equal(reference.position_ids_from_attention_mask(mask, 2), [[1, 2], [3, 4], [3, 4], [0, 0]])


def test_fully_padded_query_is_finite_and_cache_independent():
    config = make_config("default")
    params = reference.random_params(config, "base", seed=0)
    ids = np.array([[0, 0, 0, 5, 6, 7]])
    mask = np.array([[0, 0, 0, 1, 1, 1]])
    full = reference.forward(params, config, ids, attention_mask=mask)
    assert np.isfinite(full["last_hidden_state"]).all()
    part = reference.forward(params, config, ids[:, :2], attention_mask=mask[:, :2])
    np.testing.assert_allclose(part["last_hidden_state"], full["last_hidden_state"][:, :2], atol=1e-12)


def test_reference_matches_transformers():
    """The float64 reference against transformers' PyTorch GPT2Model (eager, float32) on all activations."""
    import torch
    import transformers
    for act in ("gelu_new", "gelu", "relu", "silu", "gelu_fast", "quick_gelu"):
        config = make_config("mistral", activation_function=act)
        params = reference.random_params(config, "base", seed=1)
        hf = transformers.GPT2Model(transformers.GPT2Config(**config.to_dict(), attn_implementation="eager")).eval()
        result = hf.load_state_dict({k: torch.from_numpy(v) for k, v in params.items()}, strict=False)
        assert not result.missing_keys and not result.unexpected_keys
        ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 9))
        with torch.no_grad():
            theirs = hf(torch.from_numpy(ids)).last_hidden_state.numpy()
        ours = reference.forward(params, config, ids)["last_hidden_state"]
        assert np.max(np.abs(theirs - ours)) < 1e-5, act


# -- sampling rules against transformers' logits processors -------------------------------------------------------


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.8), (1.3, 10, 0.6)])
def test_process_logits_matches_transformers(temperature, top_k, top_p):
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).standard_normal((4, 50)).astype(np.float32) * 3
    gen = make_generation_config(make_config("default"), 1, temperature=temperature, top_k=top_k, top_p=top_p, do_sample=True)
    ours = process_logits(logits, gen)
    x = torch.from_numpy(logits)
    x = TemperatureLogitsWarper(temperature)(None, x)
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p:
        x = TopPLogitsWarper(top_p)(None, x)
    theirs = x.numpy()
    np.testing.assert_array_equal(np.isfinite(theirs) & (theirs > -1e30), ours > -1e30)
    kept = ours > -1e30
    np.testing.assert_allclose(ours[kept], theirs[kept], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be a positive integer"),
        (dict(temperature=0.0, do_sample=True), "temperature must be > 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=-1), "top_k must be a non-negative integer"),
        (dict(max_new_tokens=30), "exceeds n_positions=24"),
    ],
)
def test_generation_arguments_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_generation_config(make_config("default"), 3, **kwargs)


# -- hub IO --------------------------------------------------------------------------------------------------------


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with hub.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_config_from_hub_cache_with_hub_kwargs_and_overrides(tmp_path, no_network):
    config = make_config("default")
    sha = "a" * 40
    make_hub_cache(tmp_path / "cache", "org/name", {"config.json": config.to_json_string().encode()}, sha=sha)
    for revision in (None, "main", sha):
        got = GPT2Config.from_pretrained("org/name", cache_dir=tmp_path / "cache", local_files_only=True,
                                         revision=revision, n_positions=12)
        assert got.n_embd == config.n_embd and got.n_positions == 12
    with pytest.raises(FileNotFoundError, match="not in the cache") as e:  # another revision was never downloaded
        GPT2Config.from_pretrained("org/name", cache_dir=tmp_path / "cache", local_files_only=True, revision="b" * 40)
    assert str(tmp_path / "cache") in str(e.value)


def test_missing_file_in_the_cache_says_so(tmp_path, no_network):
    make_hub_cache(tmp_path / "cache", "org/name", {"model.safetensors": b"x"})
    with pytest.raises(FileNotFoundError, match="config.json of 'org/name' is not in the cache") as e:
        GPT2Config.from_pretrained("org/name", cache_dir=tmp_path / "cache", local_files_only=True)
    assert str(tmp_path / "cache") in str(e.value) and "Hub repo has no" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="not in the cache"):  # a repo never downloaded at all
        hub.resolve_file("org/other", "config.json", cache_dir=tmp_path / "cache", local_files_only=True)


def test_sharded_index_from_a_hub_id_fetches_every_shard(tmp_path, no_network):
    """Any format's shard index (here tf_model.h5's) resolves with its shards, which land beside it."""
    index = {"weight_map": {"a": "tf_model-00001-of-00002.h5", "b": "tf_model-00002-of-00002.h5"}}
    files = {"tf_model.h5.index.json": json.dumps(index).encode(), "tf_model-00001-of-00002.h5": b"1",
             "tf_model-00002-of-00002.h5": b"2"}
    snapshot = make_hub_cache(tmp_path / "cache", "org/name", files)
    kw = dict(cache_dir=tmp_path / "cache", local_files_only=True)
    found = hub.resolve_weights("org/name", **kw)
    assert found == snapshot / "tf_model.h5.index.json" and hub.WEIGHT_FILES[found.name] == "tf"
    (snapshot / "tf_model-00002-of-00002.h5").unlink()
    with pytest.raises(FileNotFoundError, match="tf_model-00002-of-00002.h5 of 'org/name' is not in the cache"):
        hub.resolve_weights("org/name", **kw)


@pytest.mark.parametrize("name", ["./typo-model", "../typo-model", "~/typo-model", "checkpoints/run1/typo",
                                  "/abs/typo-model", "EXISTING/typo-model"])
def test_mistyped_local_path_fails_at_once_naming_it(tmp_path, monkeypatch, no_network, name):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("sent to the Hub"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTING").mkdir()  # the first part exists: a path, not org/name
    assert hub.looks_like_path(name)
    with pytest.raises(FileNotFoundError, match="No such local directory") as e:
        GPT2Config.from_pretrained(name)
    assert repr(name) in str(e.value)
    with pytest.raises(FileNotFoundError, match="No such local directory"):
        hub.resolve_weights(name)


def test_hub_ids_are_not_paths():
    assert not hub.looks_like_path("gpt2") and not hub.looks_like_path("openai-community/gpt2")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['proxy'\\]"):
        hub.check_hub_kwargs({"proxy": 1, "revision": "main"})


def test_weight_files_is_the_one_list():
    assert list(hub.WEIGHT_FILES)[:2] == ["model.safetensors", "model.safetensors.index.json"]
    assert {"tf_model.h5", "tf_model.h5.index.json", "flax_model.msgpack", "pytorch_model.bin"} <= set(hub.WEIGHT_FILES)
    assert set(hub.WEIGHT_FILES.values()) == {"safetensors", "pytorch", "tf", "flax"}


def test_missing_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="No such local directory"):
        hub.resolve_file(str(tmp_path / "nope" / "deeper" / "x"), "config.json")
    with pytest.raises(FileNotFoundError, match="No weights found"):
        hub.resolve_weights(tmp_path)


def test_written_files_get_normal_permissions(tmp_path):
    """Atomic writes go through a private temporary file; the result has the mode a plain write would give."""
    hub.atomic_write_text(tmp_path / "notes.txt", "x")
    make_config("default").save_pretrained(tmp_path)
    for name in ("notes.txt", "config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == hub.default_mode(), name
    with hub.atomic_directory(tmp_path / "out") as d:
        (d / "a").write_text("a")
    assert (tmp_path / "out").stat().st_mode & 0o777 == hub.default_mode(directory=True)


def test_shape_table_is_built_once_per_config_and_head(monkeypatch):
    config = make_config("untied", n_layer=3)
    calls = []
    real = naming.body_shapes
    monkeypatch.setattr(naming, "body_shapes", lambda c: calls.append(1) or real(c))
    naming._TABLES.clear()
    for key in naming.canonical_shapes(config, "lm"):
        naming.backend_path(key, "tf", config, "lm")
    naming.to_backend(reference.random_params(config, "lm", seed=0), "flax", config, "lm")
    assert len(calls) == 1
    naming.backend_path("wte.weight", "tf", config.copy(n_layer=2), "lm")  # another config: another table
    assert len(calls) == 2


def test_one_strict_check_lists_every_problem():
    config = make_config("default")
    params = reference.random_params(config, "seqcls", seed=0)
    params["h.9.ln_1.weight"] = np.zeros(3)
    params["wte.weight"] = np.zeros((5, 5))
    del params["score.weight"]
    with pytest.raises(ValueError) as e:
        naming.check_canonical(params, config, "seqcls", "test dict")
    msg = str(e.value)
    assert "missing keys: ['score.weight']" in msg and "unexpected keys: ['h.9.ln_1.weight']" in msg
    assert f"wte.weight: expected ({config.vocab_size}, {config.n_embd}), found (5, 5)" in msg
    del params["h.9.ln_1.weight"]
    params["wte.weight"] = np.zeros((config.vocab_size, config.n_embd))
    assert naming.check_canonical(params, config, "seqcls", allow_missing_head=True) == ["score.weight"]


def test_generic_config_fields_set_as_attributes_are_written_and_typed():
    """`config.output_hidden_states = True` (transformers users set it so) is saved with the config, read back, and
    a string where a bool belongs is refused as on read."""
    from gpt2_core.config import GPT2Config

    config = GPT2Config(n_layer=1, n_embd=8, n_head=2)
    config.output_hidden_states = True
    config.return_dict = False
    again = GPT2Config.from_dict(config.to_dict())
    assert config.to_dict()["output_hidden_states"] is True
    assert again.output_hidden_states is True and again.return_dict is False
    with pytest.raises(ValueError, match="output_attentions"):
        config.output_attentions = "yes"


def test_resize_row_count_follows_transformers_rounding():
    """transformers' resize_token_embeddings: round up to pad_to_multiple_of (the current size when no count)."""
    from gpt2_core.checks import resize_row_count

    assert resize_row_count(None, None, 10) is None
    assert resize_row_count(12, None, 10) == 12
    assert resize_row_count(11, 8, 10) == 16 and resize_row_count(16, 8, 10) == 16
    assert resize_row_count(None, 8, 10) == 16
    for bad in ((0, None), (None, 0), ("3", None), (True, None), (5, 2.5)):
        with pytest.raises(ValueError, match="positive integer"):
            resize_row_count(*bad, 10)
