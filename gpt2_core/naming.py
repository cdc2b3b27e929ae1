"""The one table of parameter names: canonical checkpoint names <-> each backend's parameter paths and layouts.

Canonical names are the Hugging Face Hub names of `GPT2Model` (`wte.weight`, `h.0.attn.c_attn.weight`, ...) plus the
head names transformers uses (`lm_head.weight`, `multiple_choice_head.summary.weight`, `score.weight`,
`qa_outputs.weight`, `classifier.weight`). Canonical arrays have the Hub layouts: the GPT-2 body's projection matrices
(transformers' `Conv1D`) are `[in, out]`; the heads are `nn.Linear` weights, `[out, in]`.

Each backend names its parameters by dotted attribute path relative to its body module (`GPT2Model`), heads relative
to the task model; `backend_path` gives the path and whether the array is transposed on the way in and out. Hub files
of task models prefix body keys with `transformer.`; `from_hub_state_dict` / `to_hub_state_dict` handle that, the
buffers old files carry (`attn.bias`, `attn.masked_bias`) and the tied LM head.

Data flows one way: files -> canonical dict[str, np.ndarray] -> backend parameters. Nothing else knows a backend's
parameter paths.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from gpt2_core.config import GPT2Config

BACKENDS = ("torch", "tf", "flax")
HEADS = ("base", "lm", "double", "qa", "seqcls", "tokcls")
BODY_PREFIX = "transformer."

# Keys some Hub files carry that are not parameters (old causal-mask buffers); transformers ignores them too.
IGNORED_KEY_PATTERNS = (
    re.compile(r"^(transformer\.)?h\.\d+\.(attn|crossattention)\.(bias|masked_bias)$"),
)


@dataclass(frozen=True)
class Rule:
    """How one kind of canonical tensor maps to a backend parameter.

    `suffix` maps a canonical leaf name (`weight`/`bias`) to the backend's leaf name per backend, and `transpose`
    says per backend whether the backend layout is the canonical matrix transposed.
    """

    kind: str
    leaf: dict[str, dict[str, str]]
    transpose: dict[str, bool]


# Kinds of modules and their leaves in each backend. torch uses nn.Linear ([out, in]) everywhere, so the body's
# Hub `[in, out]` matrices are transposed for torch; Keras Dense / nnx.Linear kernels are `[in, out]`, so the
# heads' Hub `nn.Linear` weights are transposed for tf and flax.
EMBEDDING = Rule(
    "embedding",
    {"torch": {"weight": "weight"}, "tf": {"weight": "embeddings"}, "flax": {"weight": "embedding"}},
    {"torch": False, "tf": False, "flax": False},
)
LAYER_NORM = Rule(
    "layer_norm",
    {
        "torch": {"weight": "weight", "bias": "bias"},
        "tf": {"weight": "gamma", "bias": "beta"},
        "flax": {"weight": "scale", "bias": "bias"},
    },
    {"torch": False, "tf": False, "flax": False},
)
CONV1D = Rule(  # Hub [in, out]
    "conv1d",
    {
        "torch": {"weight": "weight", "bias": "bias"},
        "tf": {"weight": "kernel", "bias": "bias"},
        "flax": {"weight": "kernel", "bias": "bias"},
    },
    {"torch": True, "tf": False, "flax": False},
)
LINEAR = Rule(  # Hub [out, in]
    "linear",
    {
        "torch": {"weight": "weight", "bias": "bias"},
        "tf": {"weight": "kernel", "bias": "bias"},
        "flax": {"weight": "kernel", "bias": "bias"},
    },
    {"torch": False, "tf": True, "flax": True},
)


def _summary_classes(config: GPT2Config) -> int:
    # transformers' GPT2SequenceSummary; GPT2DoubleHeadsModel forces num_labels = 1.
    return 1 if config.summary_proj_to_labels else config.n_embd


def body_shapes(config: GPT2Config) -> dict[str, tuple[tuple[int, ...], Rule]]:
    """Canonical body keys (no prefix) -> (shape, rule)."""
    C, V, P, I = config.n_embd, config.vocab_size, config.n_positions, config.inner_dim
    out: dict[str, tuple[tuple[int, ...], Rule]] = {
        "wte.weight": ((V, C), EMBEDDING),
        "wpe.weight": ((P, C), EMBEDDING),
    }
    for i in range(config.n_layer):
        p = f"h.{i}."
        out[p + "ln_1.weight"] = ((C,), LAYER_NORM)
        out[p + "ln_1.bias"] = ((C,), LAYER_NORM)
        out[p + "attn.c_attn.weight"] = ((C, 3 * C), CONV1D)
        out[p + "attn.c_attn.bias"] = ((3 * C,), CONV1D)
        out[p + "attn.c_proj.weight"] = ((C, C), CONV1D)
        out[p + "attn.c_proj.bias"] = ((C,), CONV1D)
        if config.add_cross_attention:
            out[p + "ln_cross_attn.weight"] = ((C,), LAYER_NORM)
            out[p + "ln_cross_attn.bias"] = ((C,), LAYER_NORM)
            out[p + "crossattention.c_attn.weight"] = ((C, 2 * C), CONV1D)
            out[p + "crossattention.c_attn.bias"] = ((2 * C,), CONV1D)
            out[p + "crossattention.q_attn.weight"] = ((C, C), CONV1D)
            out[p + "crossattention.q_attn.bias"] = ((C,), CONV1D)
            out[p + "crossattention.c_proj.weight"] = ((C, C), CONV1D)
            out[p + "crossattention.c_proj.bias"] = ((C,), CONV1D)
        out[p + "ln_2.weight"] = ((C,), LAYER_NORM)
        out[p + "ln_2.bias"] = ((C,), LAYER_NORM)
        out[p + "mlp.c_fc.weight"] = ((C, I), CONV1D)
        out[p + "mlp.c_fc.bias"] = ((I,), CONV1D)
        out[p + "mlp.c_proj.weight"] = ((I, C), CONV1D)
        out[p + "mlp.c_proj.bias"] = ((C,), CONV1D)
    out["ln_f.weight"] = ((C,), LAYER_NORM)
    out["ln_f.bias"] = ((C,), LAYER_NORM)
    return out


def head_shapes(config: GPT2Config, head: str) -> dict[str, tuple[tuple[int, ...], Rule]]:
    """Canonical head keys of a task model -> (shape, rule). The tied LM head has no key of its own."""
    _check_head(head)
    C, V, L = config.n_embd, config.vocab_size, config.num_labels
    out: dict[str, tuple[tuple[int, ...], Rule]] = {}
    if head in ("lm", "double") and not config.tie_word_embeddings:
        out["lm_head.weight"] = ((V, C), LINEAR)
    if head == "double" and config.summary_use_proj:
        n = _summary_classes(config)
        out["multiple_choice_head.summary.weight"] = ((n, C), LINEAR)
        out["multiple_choice_head.summary.bias"] = ((n,), LINEAR)
    if head == "seqcls":
        out["score.weight"] = ((L, C), LINEAR)
    if head == "qa":
        out["qa_outputs.weight"] = ((2, C), LINEAR)
        out["qa_outputs.bias"] = ((2,), LINEAR)
    if head == "tokcls":
        out["classifier.weight"] = ((L, C), LINEAR)
        out["classifier.bias"] = ((L,), LINEAR)
    return out


def canonical_shapes(config: GPT2Config, head: str = "base") -> dict[str, tuple[int, ...]]:
    """Every canonical key of the model `head` -> its shape."""
    table = {**body_shapes(config), **head_shapes(config, head)}
    return {k: shape for k, (shape, _) in table.items()}


def is_head_key(key: str) -> bool:
    return key.split(".", 1)[0] in ("lm_head", "multiple_choice_head", "score", "qa_outputs", "classifier")


def backend_path(key: str, backend: str, config: GPT2Config, head: str = "base") -> tuple[str, bool]:
    """(backend parameter path, transpose?) of canonical `key`.

    Body paths are relative to the backend's body module; a task model's loader prefixes its attribute name
    (`transformer.`). Head paths are relative to the task model.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend. Received: backend={backend!r}. Use one of {BACKENDS}.")
    table = {**body_shapes(config), **head_shapes(config, head)}
    if key not in table:
        raise KeyError(key)
    _, rule = table[key]
    module, leaf = key.rsplit(".", 1)
    return f"{module}.{rule.leaf[backend][leaf]}", rule.transpose[backend]


def to_backend(
    canonical: Mapping[str, np.ndarray], backend: str, config: GPT2Config, head: str = "base"
) -> dict[str, np.ndarray]:
    """Canonical dict -> {backend path: array in backend layout}. Body paths get `transformer.` for task models."""
    out = {}
    for key, value in canonical.items():
        path, transpose = backend_path(key, backend, config, head)
        if head != "base" and not is_head_key(key):
            path = BODY_PREFIX + path
        out[path] = np.ascontiguousarray(np.asarray(value).T) if transpose else np.asarray(value)
    return out


def from_backend(
    params: Mapping[str, np.ndarray], backend: str, config: GPT2Config, head: str = "base"
) -> dict[str, np.ndarray]:
    """{backend path: array} -> canonical dict; the exact inverse of `to_backend`. Unknown paths are an error."""
    reverse = {}
    for key in canonical_shapes(config, head):
        path, transpose = backend_path(key, backend, config, head)
        if head != "base" and not is_head_key(key):
            path = BODY_PREFIX + path
        reverse[path] = (key, transpose)
    unknown = sorted(set(params) - set(reverse))
    if unknown:
        raise ValueError(f"Parameters with no canonical name in backend {backend!r}. Received: {unknown[:10]}.")
    out = {}
    for path, value in params.items():
        key, transpose = reverse[path]
        value = np.asarray(value)
        out[key] = np.ascontiguousarray(value.T) if transpose else value
    return out


def _check_head(head: str) -> None:
    if head not in HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {HEADS}.")


def from_hub_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: GPT2Config,
    head: str = "base",
    *,
    allow_missing_head: bool = True,
    source: str = "checkpoint",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """A Hub/transformers state dict (any task model's, any prefix) -> (canonical dict for `head`, missing head keys).

    Strict: body keys must be exactly those `config` describes, with exactly the right shapes. The heads a checkpoint
    lacks (loading the base `gpt2` checkpoint into a classifier) are returned so the caller initialises them, as
    transformers does; a checkpoint's extra heads for other tasks are dropped.
    """
    _check_head(head)
    expected = canonical_shapes(config, head)
    canonical: dict[str, np.ndarray] = {}
    unexpected = []
    for key, value in state_dict.items():
        if any(p.match(key) for p in IGNORED_KEY_PATTERNS):
            continue
        name = key[len(BODY_PREFIX):] if key.startswith(BODY_PREFIX) else key
        if name == "lm_head.weight" and "lm_head.weight" not in expected:
            continue  # tied to wte (or a head this model does not have)
        if is_head_key(name) and name not in expected:
            continue  # another task's head
        if name not in expected:
            unexpected.append(key)
            continue
        canonical[name] = np.asarray(value)
    missing = [k for k in expected if k not in canonical]
    missing_body = [k for k in missing if not is_head_key(k)]
    missing_head = [k for k in missing if is_head_key(k)]
    wrong = [
        f"{k}: expected {expected[k]}, found {tuple(v.shape)}"
        for k, v in canonical.items()
        if tuple(v.shape) != tuple(expected[k])
    ]
    if missing_body or unexpected or wrong or (missing_head and not allow_missing_head):
        problems = []
        if missing_body or (missing_head and not allow_missing_head):
            problems.append(f"missing keys: {(missing_body + (missing_head if not allow_missing_head else []))[:20]}")
        if unexpected:
            problems.append(f"unexpected keys: {unexpected[:20]}")
        if wrong:
            problems.append(f"wrong shapes: {wrong[:20]}")
        raise ValueError(
            f"The {source} does not match the config (n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"vocab_size={config.vocab_size}, n_positions={config.n_positions}, "
            f"add_cross_attention={config.add_cross_attention}). Received: " + "; ".join(problems)
            + ". Use the config.json saved with these weights, or a checkpoint made for this config."
        )
    return canonical, missing_head


def to_hub_state_dict(canonical: Mapping[str, np.ndarray], head: str = "base") -> dict[str, np.ndarray]:
    """Canonical dict -> the state dict transformers writes for that task model (`transformer.` prefix)."""
    _check_head(head)
    if head == "base":
        return {k: np.asarray(v) for k, v in canonical.items()}
    return {(k if is_head_key(k) else BODY_PREFIX + k): np.asarray(v) for k, v in canonical.items()}
