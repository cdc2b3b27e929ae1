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
from typing import Iterator, Mapping

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


_TABLES: dict[tuple[str, str], dict[str, tuple[tuple[int, ...], Rule]]] = {}
_TABLES_MAX = 64


def shape_table(config: GPT2Config, head: str = "base") -> Mapping[str, tuple[tuple[int, ...], Rule]]:
    """Canonical key -> (shape, rule) of the model `head`: body then head keys, in checkpoint order.

    Built once per (config, head) and cached, keyed by the config's JSON (so an edited config gets a new table);
    the returned mapping is shared: do not modify it.
    """
    _check_head(head)
    key = (config.to_json_string(), head)
    table = _TABLES.get(key)
    if table is None:
        if len(_TABLES) >= _TABLES_MAX:
            _TABLES.clear()
        table = _TABLES[key] = {**body_shapes(config), **head_shapes(config, head)}
    return table


def canonical_shapes(config: GPT2Config, head: str = "base") -> dict[str, tuple[int, ...]]:
    """Every canonical key of the model `head` -> its shape."""
    return {k: shape for k, (shape, _) in shape_table(config, head).items()}


def is_head_key(key: str) -> bool:
    return key.split(".", 1)[0] in ("lm_head", "multiple_choice_head", "score", "qa_outputs", "classifier")


def backend_path(key: str, backend: str, config: GPT2Config, head: str = "base") -> tuple[str, bool]:
    """(backend parameter path, transpose?) of canonical `key`.

    Body paths are relative to the backend's body module; a task model's loader prefixes its attribute name
    (`transformer.`). Head paths are relative to the task model.
    """
    return _backend_path(key, backend, shape_table(config, head))


def _backend_path(key: str, backend: str, table: Mapping[str, tuple[tuple[int, ...], Rule]]) -> tuple[str, bool]:
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend. Received: backend={backend!r}. Use one of {BACKENDS}.")
    if key not in table:
        raise KeyError(key)
    _, rule = table[key]
    module, leaf = key.rsplit(".", 1)
    return f"{module}.{rule.leaf[backend][leaf]}", rule.transpose[backend]


def _backend_paths(backend: str, config: GPT2Config, head: str) -> dict[str, tuple[str, bool]]:
    """Canonical key -> (full backend path, transpose?) for every key of `head` (body paths prefixed for task
    models)."""
    table = shape_table(config, head)
    out = {}
    for key in table:
        path, transpose = _backend_path(key, backend, table)
        if head != "base" and not is_head_key(key):
            path = BODY_PREFIX + path
        out[key] = (path, transpose)
    return out


def to_backend(
    canonical: Mapping[str, np.ndarray], backend: str, config: GPT2Config, head: str = "base"
) -> dict[str, np.ndarray]:
    """Canonical dict -> {backend path: array in backend layout}. Body paths get `transformer.` for task models."""
    return dict(iter_backend(canonical, backend, config, head))


def backend_keys(canonical: Mapping[str, np.ndarray], backend: str, config: GPT2Config, head: str = "base") -> set[str]:
    """The backend paths `to_backend` would give, without touching the arrays."""
    paths = _backend_paths(backend, config, head)
    missing = [key for key in canonical if key not in paths]
    if missing:
        raise KeyError(missing[0])
    return {paths[key][0] for key in canonical}


def iter_backend(
    canonical: Mapping[str, np.ndarray],
    backend: str,
    config: GPT2Config,
    head: str = "base",
    *,
    contiguous: bool = True,
) -> Iterator[tuple[str, np.ndarray]]:
    """`to_backend` one tensor at a time: (backend path, array in backend layout). A loader that copies each array
    into its parameter as it comes holds one transposed tensor at a time, not a second copy of the model; with
    `contiguous=False` a transposed matrix comes as a view (no copy), for a loader whose copy takes any strides (and
    a value read from `canonical` is dropped as soon as the loader moves on: a lazy mapping, such as
    `weights_convert`'s `CheckpointTensors`, then never holds more than one tensor)."""
    paths = _backend_paths(backend, config, head)
    for key in canonical:
        if key not in paths:
            raise KeyError(key)
        path, transpose = paths[key]
        value = np.asarray(canonical[key])
        if transpose:
            value = np.ascontiguousarray(value.T) if contiguous else value.T
        yield path, value
        del value


def check_canonical(
    canonical: Mapping[str, np.ndarray],
    config: GPT2Config,
    head: str,
    owner: str = "the model",
    *,
    allow_missing_head: bool = False,
) -> list[str]:
    """The one strict check of a canonical dict against `config` and `head`: exactly the keys of `head`, every
    shape right. The error lists missing, unexpected (under the name they were given) and mis-shaped keys.

    Readers (`weights_convert`) run it on the file's shapes before reading any tensor, and every backend's
    `load_canonical` on what it is given. With `allow_missing_head`, absent head keys (a base checkpoint read for a
    classifier) are not an error and are returned, for the caller to initialise.

    Returns:
        The missing head keys (always empty unless `allow_missing_head`).
    """
    expected = shape_table(config, head)
    missing = [k for k in expected if k not in canonical]
    missing_head = [k for k in missing if is_head_key(k)] if allow_missing_head else []
    missing = [k for k in missing if k not in missing_head]
    unexpected = [k for k in canonical if k not in expected]
    wrong = [
        f"{k}: expected {expected[k][0]}, found {tuple(np.shape(v))}"
        for k, v in canonical.items()
        if k in expected and tuple(np.shape(v)) != tuple(expected[k][0])
    ]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing keys: {missing[:20]}")
        if unexpected:
            problems.append(f"unexpected keys: {unexpected[:20]}")
        if wrong:
            problems.append(f"wrong shapes: {wrong[:20]}")
        raise ValueError(
            f"The {owner} does not match the config (n_layer={config.n_layer}, n_embd={config.n_embd}, "
            f"vocab_size={config.vocab_size}, n_positions={config.n_positions}, "
            f"add_cross_attention={config.add_cross_attention}, head={head!r}). Received: " + "; ".join(problems)
            + ". Use the config.json saved with these weights, or a checkpoint made for this config."
        )
    return missing_head


def canonical_names(backend: str, config: GPT2Config, head: str = "base") -> dict[str, str]:
    """{backend parameter path: canonical key} for a model of `head` (body paths prefixed for task models)."""
    return {path: key for key, (path, _) in _backend_paths(backend, config, head).items()}


def from_backend(
    params: Mapping[str, np.ndarray], backend: str, config: GPT2Config, head: str = "base"
) -> dict[str, np.ndarray]:
    """{backend path: array} -> canonical dict; the exact inverse of `to_backend`. Unknown paths are an error."""
    reverse = {path: (key, transpose) for key, (path, transpose) in _backend_paths(backend, config, head).items()}
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


def select_head(
    named: Mapping[str, np.ndarray], config: GPT2Config, head: str = "base"
) -> dict[str, np.ndarray]:
    """Tensors under canonical names (or Hub names: any task model's, `transformer.` prefix or not) -> the ones a
    `head` model uses, under canonical names; other tasks' heads, a tied `lm_head.weight` copy and the buffers old
    files carry (`IGNORED_KEY_PATTERNS`) are dropped. Names it does not know are kept as given, for `check_canonical`
    to report as unexpected."""
    expected = shape_table(config, head)
    out: dict[str, np.ndarray] = {}
    for key, value in named.items():
        if any(p.match(key) for p in IGNORED_KEY_PATTERNS):
            continue
        name = key[len(BODY_PREFIX):] if key.startswith(BODY_PREFIX) else key
        if is_head_key(name) and name not in expected:
            continue  # another task's head, or lm_head.weight tied to wte
        out[name if name in expected else key] = value
    return out


def from_hub_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: GPT2Config,
    head: str = "base",
    *,
    allow_missing_head: bool = True,
    source: str = "checkpoint",
) -> tuple[dict[str, np.ndarray], list[str]]:
    """A Hub/transformers state dict (any task model's, any prefix) -> (canonical dict for `head`, missing head keys).

    `select_head`, then `check_canonical`: body keys must be exactly those `config` describes, with exactly the
    right shapes. The heads a checkpoint lacks (loading the base `gpt2` checkpoint into a classifier) are returned
    so the caller initialises them, as transformers does; a checkpoint's extra heads for other tasks are dropped.
    """
    _check_head(head)
    canonical = {k: np.asarray(v) for k, v in select_head(state_dict, config, head).items()}
    missing_head = check_canonical(canonical, config, head, source, allow_missing_head=allow_missing_head)
    return canonical, missing_head


def to_hub_state_dict(canonical: Mapping[str, np.ndarray], head: str = "base") -> dict[str, np.ndarray]:
    """Canonical dict -> the state dict transformers writes for that task model (`transformer.` prefix)."""
    _check_head(head)
    if head == "base":
        return {k: np.asarray(v) for k, v in canonical.items()}
    return {(k if is_head_key(k) else BODY_PREFIX + k): np.asarray(v) for k, v in canonical.items()}


# =====================================================================================================================
# Other libraries' checkpoint files (used by weights_convert). Appended section, owned by weights_convert.
#
# Canonical key -> (name inside the file, layout), for the formats the converter reads and writes without building a
# model. References (transformers 4.46, the last releases with the TF and Flax classes):
#   tf_h5         `tf_model.h5` of TFGPT2* (Keras 2 `save_weights`): weight names like
#                 `tfgpt2lm_head_model/transformer/h_._0/attn/c_attn/weight:0`; the first component is the Keras model
#                 name (the class name in snake case; old files spell it `tfgp_t2lm_head_model`), which transformers
#                 strips when loading. TFConv1D stores `weight` `[in, out]` (the Hub layout) and `bias` `[1, out]`;
#                 keras Dense stores `kernel` `[in, out]` (the Hub `nn.Linear` weight transposed). Old files
#                 (TFSharedEmbeddings) name the token embedding `wte/weight:0`, newer ones `wte/embeddings:0`.
#                 The base model TFGPT2Model also nests its body under `transformer/`.
#   flax_msgpack  `flax_model.msgpack` of FlaxGPT2* (`flax.serialization.to_bytes(params)`): paths like
#                 `transformer/h/0/attn/c_attn/kernel`. FlaxConv1D keeps its kernel `[out, in]` (the Hub matrix
#                 transposed; transformers' convert_pytorch_state_dict_to_flax transposes it); nn.Dense kernels are
#                 `[in, out]`; `ln_1/scale`; `wte/embedding`. FlaxGPT2Model files have no `transformer/` prefix.
#   openai        OpenAI's original TF1 checkpoint (`model.ckpt.*` + hparams.json): `model/wte`, `model/h0/ln_1/g`,
#                 `model/h0/attn/c_attn/w` `[1, in, out]` (a 1x1 conv), `model/ln_f/b`. The language model only.
# transformers 4.x has no TF/Flax class for some heads (TF: qa, tokcls, untied lm_head; Flax: everything but
# base/lm); for those the tables use the same module names with that framework's Dense layout, so our files
# round-trip, and weights_convert warns that transformers 4.x will not load that head.
# =====================================================================================================================

FILE_FORMATS = ("tf_h5", "flax_msgpack", "openai")

# Layouts: how the file's array relates to the canonical one.
#   same       identical
#   transpose  2-D transpose
#   row        canonical (n,) stored as (1, n)          (TFConv1D bias)
#   conv       canonical (in, out) stored as (1, in, out) (OpenAI's conv1d weights)
FILE_LAYOUTS = ("same", "transpose", "row", "conv")

# transformers' class name of each head (config.json `architectures`), and the heads' top-level module names.
ARCHITECTURES = {
    "base": "GPT2Model",
    "lm": "GPT2LMHeadModel",
    "double": "GPT2DoubleHeadsModel",
    "qa": "GPT2ForQuestionAnswering",
    "seqcls": "GPT2ForSequenceClassification",
    "tokcls": "GPT2ForTokenClassification",
}
# config.json `architectures` -> head, for every spelling a GPT-2 checkpoint carries: transformers' class names and
# the TF/Flax class names old transformers 4.x TF and Flax classes wrote.
ARCHITECTURE_HEADS = {
    **{name: head for head, name in ARCHITECTURES.items()},
    **{"TF" + name: head for head, name in ARCHITECTURES.items()},
    **{"Flax" + name: head for head, name in ARCHITECTURES.items()},
}
HEAD_MODULES = {
    "multiple_choice_head": "double",  # checked first: a double-heads model may also carry an untied lm_head
    "score": "seqcls",
    "qa_outputs": "qa",
    "classifier": "tokcls",
    "lm_head": "lm",
}

# Keras model names (the first component of every weight name in a 4.x tf_model.h5), per head.
TF_MODEL_NAMES = {
    "base": "tfgpt2_model",
    "lm": "tfgpt2lm_head_model",
    "double": "tfgpt2_double_heads_model",
    "qa": "tfgpt2_for_question_answering",
    "seqcls": "tfgpt2_for_sequence_classification",
    "tokcls": "tfgpt2_for_token_classification",
}

# (module kind -> canonical leaf -> (file leaf, layout)) per format; kinds are the Rule kinds above.
_FILE_LEAVES: dict[str, dict[str, dict[str, tuple[str, str]]]] = {
    "tf_h5": {
        "embedding": {"weight": ("embeddings:0", "same")},
        "layer_norm": {"weight": ("gamma:0", "same"), "bias": ("beta:0", "same")},
        "conv1d": {"weight": ("weight:0", "same"), "bias": ("bias:0", "row")},
        "linear": {"weight": ("kernel:0", "transpose"), "bias": ("bias:0", "same")},
    },
    "flax_msgpack": {
        "embedding": {"weight": ("embedding", "same")},
        "layer_norm": {"weight": ("scale", "same"), "bias": ("bias", "same")},
        "conv1d": {"weight": ("kernel", "transpose"), "bias": ("bias", "same")},
        "linear": {"weight": ("kernel", "transpose"), "bias": ("bias", "same")},
    },
    "openai": {
        "embedding": {"weight": ("", "same")},
        "layer_norm": {"weight": ("g", "same"), "bias": ("b", "same")},
        "conv1d": {"weight": ("w", "conv"), "bias": ("b", "same")},
    },
}

# Other spellings readers accept: (pattern, replacement) applied to a name (model-name prefix already stripped).
FILE_ALIASES: dict[str, tuple[tuple[re.Pattern, str], ...]] = {
    "tf_h5": ((re.compile(r"^(transformer/wte)/weight:0$"), r"\1/embeddings:0"),),  # TFSharedEmbeddings, < 4.27
    "flax_msgpack": (),
    "openai": (),
}

# OpenAI checkpoints from fine-tuning scripts carry optimizer state (`model/h0/attn/c_attn/w/Adam`, `beta1_power`,
# `global_step`; transformers issues #698, #6467, #11435). Variables outside `model/`, and slots below a model
# variable, are not parameters and are skipped.
OPENAI_SCOPE = "model/"


def _file_module(fmt: str, module: str, head: str, is_head: bool) -> str:
    """Canonical module path (`h.3.attn.c_attn`) -> the format's path (`transformer/h_._3/attn/c_attn`)."""
    parts = module.split(".")
    if fmt == "openai":
        if parts[0] == "h":
            parts = [f"h{parts[1]}"] + parts[2:]
        return OPENAI_SCOPE + "/".join(parts)
    if parts[0] == "h":
        parts = ([f"h_._{parts[1]}"] if fmt == "tf_h5" else ["h", parts[1]]) + parts[2:]
    path = "/".join(parts)
    if is_head:
        return path
    if fmt == "tf_h5" or head != "base":  # TFGPT2Model nests the body under `transformer/` too; FlaxGPT2Model doesn't
        return "transformer/" + path
    return path


def file_names(fmt: str, config: GPT2Config, head: str = "base") -> dict[str, tuple[str, str]]:
    """Canonical key -> (name in a `fmt` file, layout) for the model `head`.

    tf_h5 names are relative to the Keras model (no model-name prefix); flax_msgpack names are `/`-joined tree paths.
    """
    if fmt not in FILE_FORMATS:
        raise ValueError(f"Unknown file format. Received: fmt={fmt!r}. Use one of {FILE_FORMATS}.")
    _check_head(head)
    out = {}
    for key, (_, rule) in {**body_shapes(config), **head_shapes(config, head)}.items():
        module, leaf = key.rsplit(".", 1)
        leaves = _FILE_LEAVES[fmt].get(rule.kind)
        if leaves is None:
            raise ValueError(
                f"The {fmt} format has no place for this tensor. Received: key={key!r}. "
                "Convert to safetensors instead, which holds every head."
            )
        file_leaf, layout = leaves[leaf]
        path = _file_module(fmt, module, head, is_head_key(key))
        out[key] = (f"{path}/{file_leaf}" if file_leaf else path, layout)
    return out


def file_name_table(fmt: str, config: GPT2Config, head: str = "base") -> dict[str, tuple[str, str]]:
    """Name in a `fmt` file -> (canonical key, layout), for the body and every head a `head` file may carry.

    Other heads' tensors map to their canonical head keys, which `from_hub_state_dict` drops.
    """
    out: dict[str, tuple[str, str]] = {}
    for h in (head,) + tuple(x for x in HEADS if x != head):
        try:
            names = file_names(fmt, config, h)
        except ValueError:  # a head the format cannot hold (openai)
            continue
        for key, (name, layout) in names.items():
            out.setdefault(name, (key, layout))
    return out


def normalize_file_name(fmt: str, name: str) -> str:
    """Apply the format's accepted alternative spellings (`FILE_ALIASES`)."""
    for pattern, repl in FILE_ALIASES[fmt]:
        name = pattern.sub(repl, name)
    return name


def is_openai_extra(name: str, known: Mapping[str, object]) -> bool:
    """An OpenAI-checkpoint variable that is not a model parameter (optimizer slots, counters)."""
    if name in known:
        return False
    if not name.startswith(OPENAI_SCOPE):
        return True
    parent = name.rsplit("/", 1)[0]
    while "/" in parent:
        if parent in known:
            return True  # a slot of a parameter, e.g. model/h0/attn/c_attn/w/Adam_1
        parent = parent.rsplit("/", 1)[0]
    return False


def to_file_layout(value: np.ndarray, layout: str) -> np.ndarray:
    """Canonical array -> the array stored in the file."""
    value = np.asarray(value)
    if layout == "same":
        return value
    if layout == "transpose":
        return np.ascontiguousarray(value.T)
    if layout == "row":
        return value.reshape(1, -1)
    if layout == "conv":
        return value[None]
    raise ValueError(f"Unknown layout. Received: layout={layout!r}. Use one of {FILE_LAYOUTS}.")


def from_file_layout(value: np.ndarray, layout: str) -> np.ndarray:
    """The array stored in the file -> canonical layout. An unexpected rank is left alone for the shape check."""
    value = np.asarray(value)
    if layout == "same":
        return value
    if layout == "transpose":
        return np.ascontiguousarray(value.T) if value.ndim == 2 else value
    if layout == "row":
        return value.reshape(-1) if value.ndim == 2 and value.shape[0] == 1 else value
    if layout == "conv":
        return value[0] if value.ndim == 3 and value.shape[0] == 1 else value
    raise ValueError(f"Unknown layout. Received: layout={layout!r}. Use one of {FILE_LAYOUTS}.")


def head_from_names(names, *, sep: str = ".") -> str | None:
    """The task head a checkpoint holds, from its tensor names (canonical, Hub or file names), or None if none.

    `sep` is the names' separator; the `transformer` prefix and (tf_h5) model-name prefixes must be stripped.
    """
    tops = {n.split(sep, 1)[0] for n in names}
    for module, head in HEAD_MODULES.items():
        if module in tops:
            return head
    return None


def head_from_architectures(architectures) -> str | None:
    """The head a config.json's `architectures` list names (`ARCHITECTURE_HEADS`), or None."""
    if not architectures:
        return None
    return ARCHITECTURE_HEADS.get(str(architectures[0]))
