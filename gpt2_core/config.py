"""GPT2Config: the model hyperparameters, with the names and defaults of Hugging Face's `config.json`.

A config written by transformers (`GPT2Config.save_pretrained`) loads here unchanged and keys this library does not
know are kept and written back, so a round trip loses nothing.

References:
    transformers/models/gpt2/configuration_gpt2.py (v5) for names and defaults.
"""

from __future__ import annotations

import copy
import json
import logging
import numbers
import os
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"

# Activation names transformers' ACT2FN accepts for GPT-2 checkpoints; their meaning is fixed once in
# `gpt2_core.reference.ACTIVATIONS` and every backend follows it.
SUPPORTED_ACTIVATIONS = (
    "gelu_new",
    "gelu_pytorch_tanh",
    "gelu",
    "gelu_fast",
    "quick_gelu",
    "relu",
    "silu",
    "swish",
    "tanh",
    "sigmoid",
    "linear",
)

SUMMARY_TYPES = ("last", "first", "mean", "cls_index")

# (field, default) in the order of transformers' GPT2Config, then the PretrainedConfig fields GPT-2 uses.
_DEFAULTS: dict[str, Any] = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "n_inner": None,
    "activation_function": "gelu_new",
    "resid_pdrop": 0.1,
    "embd_pdrop": 0.1,
    "attn_pdrop": 0.1,
    "layer_norm_epsilon": 1e-5,
    "initializer_range": 0.02,
    "summary_type": "cls_index",
    "summary_use_proj": True,
    "summary_activation": None,
    "summary_proj_to_labels": True,
    "summary_first_dropout": 0.1,
    "scale_attn_weights": True,
    "use_cache": True,
    "bos_token_id": 50256,
    "eos_token_id": 50256,
    "pad_token_id": None,
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
    "problem_type": None,
    "classifier_dropout": None,
}

# transformers' attribute_map: the generic names are read-only views of the GPT-2 names, never a second field.
ATTRIBUTE_MAP = {
    "hidden_size": "n_embd",
    "max_position_embeddings": "n_positions",
    "num_attention_heads": "n_head",
    "num_hidden_layers": "n_layer",
}

# Hub ids of the released checkpoints -> their hyperparameters (from each repo's config.json).
# The JSON types each field may hold, as transformers v5's strict dataclass fields declare them (a string where a
# bool or a number belongs is an error there too). Deliberately lenient in one place: an integer is accepted where a
# float belongs (`"layer_norm_epsilon": 1`), since the value then means the same thing; a bool is never a number.
_BOOL, _INT, _FLOAT, _STR, _NONE, _INT_LIST = "bool", "int", "float", "str", "None", "list[int]"
FIELD_TYPES: dict[str, tuple[str, ...]] = {
    "vocab_size": (_INT,),
    "n_positions": (_INT,),
    "n_embd": (_INT,),
    "n_layer": (_INT,),
    "n_head": (_INT,),
    "n_inner": (_INT, _NONE),
    "activation_function": (_STR,),
    "resid_pdrop": (_FLOAT,),
    "embd_pdrop": (_FLOAT,),
    "attn_pdrop": (_FLOAT,),
    "layer_norm_epsilon": (_FLOAT,),
    "initializer_range": (_FLOAT,),
    "summary_type": (_STR,),
    "summary_use_proj": (_BOOL,),
    "summary_activation": (_STR, _NONE),
    "summary_proj_to_labels": (_BOOL,),
    "summary_first_dropout": (_FLOAT, _NONE),
    "scale_attn_weights": (_BOOL,),
    "use_cache": (_BOOL,),
    "bos_token_id": (_INT, _NONE),
    "eos_token_id": (_INT, _INT_LIST, _NONE),
    "pad_token_id": (_INT, _NONE),
    "scale_attn_by_inverse_layer_idx": (_BOOL,),
    "reorder_and_upcast_attn": (_BOOL,),
    "add_cross_attention": (_BOOL,),
    "tie_word_embeddings": (_BOOL,),
    "problem_type": (_STR, _NONE),
    "classifier_dropout": (_FLOAT, _NONE),
    # transformers' PretrainedConfig fields a GPT-2 config.json may carry (kept in `extra`); typed when present.
    "output_hidden_states": (_BOOL,),
    "output_attentions": (_BOOL,),
    "return_dict": (_BOOL,),
    "is_encoder_decoder": (_BOOL,),
    "is_decoder": (_BOOL,),
    "chunk_size_feed_forward": (_INT,),
    "sep_token_id": (_INT, _NONE),
    "decoder_start_token_id": (_INT, _NONE),
}
PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")

# Fields of transformers' PretrainedConfig that GPT-2 does not define but a config may carry (in `extra`): with the
# GPT-2 fields, the label fields and the generic names, the fields `from_pretrained(**kwargs)` and `--set` may set.
PRETRAINED_CONFIG_FIELDS = (
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "architectures",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "is_encoder_decoder",
    "is_decoder",
    "chunk_size_feed_forward",
)


def _type_ok(value: Any, kind: str) -> bool:
    if kind == _NONE:
        return value is None
    # NumPy scalars count as the Python type they stand for (callers compute sizes with NumPy); a bool never counts
    # as a number.
    if kind == _BOOL:
        return isinstance(value, bool) or type(value).__name__ == "bool_"
    if kind == _INT:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == _FLOAT:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _INT_LIST:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, _INT) for v in value)
    raise AssertionError(kind)  # pragma: no cover - the table above uses only these kinds


def check_field_type(name: str, value: Any) -> None:
    """ValueError naming the field when `value` is not of a JSON type `FIELD_TYPES[name]` allows (a string where
    a bool or a number belongs: `"false"`, `"1e-5"`); unknown names pass."""
    kinds = FIELD_TYPES.get(name)
    if kinds is None or any(_type_ok(value, k) for k in kinds):
        return
    want = " or ".join({_BOOL: "a bool (true/false)", _INT: "an integer", _FLOAT: "a number", _STR: "a string",
                        _NONE: "null", _INT_LIST: "a list of integers"}[k] for k in kinds)
    hint = f" Pass {want}."
    if isinstance(value, str):
        hint = " Write it unquoted in config.json (e.g. false, 2, 1e-05), or pass a Python value, not a string."
    raise ValueError(
        f"Config field `{name}` must be {want}. Received: {name}={value!r} ({type(value).__name__}).{hint}"
    )


def config_field_names() -> frozenset[str]:
    """Every name `GPT2Config` knows as a field: the GPT-2 fields, the label fields, the generic names
    (`hidden_size`, ...) and transformers' `PRETRAINED_CONFIG_FIELDS`."""
    return frozenset(_DEFAULTS) | frozenset(ATTRIBUTE_MAP) | {"num_labels", "id2label", "label2id"} | frozenset(
        PRETRAINED_CONFIG_FIELDS
    )


def check_field_names(names: Any, source: str = "config overrides", known: Any = ()) -> None:
    """ValueError naming every one of `names` that is not a config field (`config_field_names()` or `known`),
    with the closest field as a suggestion (`--set n_layers=1` -> did you mean n_layer?)."""
    import difflib

    fields = config_field_names() | frozenset(known)
    unknown = [n for n in names if n not in fields]
    if not unknown:
        return
    hints = []
    for n in unknown:
        close = difflib.get_close_matches(n, sorted(fields), n=1, cutoff=0.6)
        hints.append(f"{n!r} (did you mean {close[0]!r}?)" if close else repr(n))
    raise ValueError(
        f"Unknown config field{'s' if len(unknown) > 1 else ''} in {source}: {', '.join(hints)}. Received: "
        f"{sorted(unknown)}. Use GPT2Config field names ({', '.join(list(_DEFAULTS)[:6])}, ...; see "
        "gpt2_core.config.GPT2Config)."
    )


PRESETS: dict[str, dict[str, Any]] = {
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25),
    "distilgpt2": dict(n_embd=768, n_layer=6, n_head=12),
}
PRESET_ALIASES = {
    "openai-community/gpt2": "gpt2",
    "openai-community/gpt2-medium": "gpt2-medium",
    "openai-community/gpt2-large": "gpt2-large",
    "openai-community/gpt2-xl": "gpt2-xl",
    "distilbert/distilgpt2": "distilgpt2",
}


def _check_num_labels(value: Any) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"`num_labels` must be a positive integer. Received: num_labels={value!r}. Pass the number of classes "
            "(at least 1; 1 means regression)."
        )


def _id2label(value: Any) -> dict[int, Any]:
    """`id2label` with integer keys (config.json writes them as strings)."""
    if not isinstance(value, dict):
        raise ValueError(
            f"Config field `id2label` must map label ids to names. Received: id2label={value!r}. Pass a dict such as "
            "{0: 'NEGATIVE', 1: 'POSITIVE'}, or num_labels instead."
        )
    out = {}
    for k, v in value.items():
        try:
            if isinstance(k, bool) or (isinstance(k, str) and not k.strip().lstrip("-").isdigit()):
                raise ValueError(k)
            out[int(k)] = v
        except (TypeError, ValueError):
            raise ValueError(
                f"The keys of `id2label` must be integer label ids. Received: id2label key {k!r}. Use 0, 1, ... "
                "(or \"0\", \"1\", ... in config.json)."
            ) from None
    return out


class GPT2Config:
    """Configuration of a GPT-2 model, field for field transformers' `GPT2Config`.

    Args:
        vocab_size: Number of tokens in the vocabulary.
        n_positions: Longest sequence the model takes (size of the position embedding).
        n_embd: Width of the residual stream (`C`).
        n_layer: Number of transformer blocks.
        n_head: Number of attention heads (`N`); must divide `n_embd`.
        n_inner: Width of the MLP; `None` means `4 * n_embd`.
        activation_function: MLP activation, one of `SUPPORTED_ACTIVATIONS`.
        resid_pdrop, embd_pdrop, attn_pdrop: Dropout rates (training only).
        layer_norm_epsilon: LayerNorm epsilon.
        initializer_range: Std of the normal init.
        summary_type, summary_use_proj, summary_activation, summary_proj_to_labels, summary_first_dropout:
            The multiple-choice head of `GPT2DoubleHeadsModel`.
        scale_attn_weights: Divide attention scores by `sqrt(head_dim)`.
        use_cache: Return `past_key_values` by default.
        bos_token_id, eos_token_id, pad_token_id: Special token ids.
        scale_attn_by_inverse_layer_idx: Mistral flag: also divide scores of layer `i` by `i + 1`.
        reorder_and_upcast_attn: Mistral flag: scale before the product and do attention in float32.
        add_cross_attention: Add cross-attention blocks (encoder-decoder use).
        tie_word_embeddings: The LM head shares the token embedding matrix.
        num_labels / id2label / label2id: Classification heads' labels.
        **kwargs: Any other `config.json` key; kept and written back.
    """

    model_type = "gpt2"

    def __init__(self, **kwargs: Any) -> None:
        for name, alias_of in ATTRIBUTE_MAP.items():
            if name in kwargs:
                value = kwargs.pop(name)
                if alias_of in kwargs and kwargs[alias_of] != value:
                    raise ValueError(
                        f"`{name}` is another name for `{alias_of}` and the two disagree. "
                        f"Received: {name}={value!r}, {alias_of}={kwargs[alias_of]!r}. Pass only `{alias_of}`."
                    )
                kwargs[alias_of] = value
        for key, default in _DEFAULTS.items():
            object.__setattr__(self, key, copy.deepcopy(kwargs.pop(key, default)))
        id2label = kwargs.pop("id2label", None)
        label2id = kwargs.pop("label2id", None)
        num_labels = kwargs.pop("num_labels", None)
        if num_labels is not None:
            _check_num_labels(num_labels)
        if id2label is None:
            n = 2 if num_labels is None else int(num_labels)
            id2label = {i: f"LABEL_{i}" for i in range(n)}
        else:
            id2label = _id2label(id2label)
            if num_labels is not None and int(num_labels) != len(id2label):
                raise ValueError(
                    f"num_labels disagrees with id2label. Received: num_labels={num_labels}, "
                    f"len(id2label)={len(id2label)}. Pass one of them."
                )
        self.id2label = id2label
        if label2id is not None and not isinstance(label2id, dict):
            raise ValueError(
                f"Config field `label2id` must map label names to ids. Received: label2id={label2id!r}. Pass a dict "
                "such as {'NEGATIVE': 0, 'POSITIVE': 1}, or leave it out."
            )
        self.label2id = dict(label2id) if label2id is not None else {v: k for k, v in id2label.items()}
        kwargs.pop("model_type", None)
        kwargs.pop("transformers_version", None)
        self.extra: dict[str, Any] = kwargs  # unknown config.json keys, written back unchanged
        self.validate()

    # -- generic names and derived values ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name in ATTRIBUTE_MAP:
            return getattr(self, ATTRIBUTE_MAP[name])
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"'GPT2Config' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ATTRIBUTE_MAP:
            name = ATTRIBUTE_MAP[name]
        if name == "num_labels":
            _check_num_labels(value)
            self.id2label = {i: f"LABEL_{i}" for i in range(int(value))}
            self.label2id = {v: k for k, v in self.id2label.items()}
            return
        if name in PRETRAINED_CONFIG_FIELDS:  # transformers' generic fields live in `extra`, so to_dict writes them
            check_field_type(name, value)
            self.__dict__.setdefault("extra", {})[name] = value
            return
        object.__setattr__(self, name, value)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    # -- validation ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise `ValueError` naming the field when the config cannot describe a working model: a value of the wrong
        JSON type (`FIELD_TYPES`: `"tie_word_embeddings": "false"`, `"layer_norm_epsilon": "1e-5"`, as transformers
        v5 refuses them) or out of range."""
        for name in FIELD_TYPES:
            if name in _DEFAULTS:
                check_field_type(name, getattr(self, name))
            elif name in self.extra:
                check_field_type(name, self.extra[name])
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}. Use a value of at least 1."
                )
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd must be divisible by n_head. Received: n_embd={self.n_embd}, n_head={self.n_head}. "
                f"Choose n_head among the divisors of {self.n_embd}."
            )
        if self.n_inner is not None and self.n_inner <= 0:
            raise ValueError(f"`n_inner` must be None or a positive integer. Received: n_inner={self.n_inner!r}.")
        if self.activation_function not in SUPPORTED_ACTIVATIONS:
            raise ValueError(
                f"Unknown activation_function. Received: activation_function={self.activation_function!r}. "
                f"Use one of {SUPPORTED_ACTIVATIONS}."
            )
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "summary_first_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= float(value) < 1.0:
                raise ValueError(f"`{name}` must be in [0, 1). Received: {name}={value!r}.")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(
                f"`layer_norm_epsilon` must be > 0. Received: layer_norm_epsilon={self.layer_norm_epsilon!r}."
            )
        if not 0 < self.num_labels:
            raise ValueError(
                f"A config needs at least one label. Received: num_labels={self.num_labels} "
                f"(id2label={self.id2label}). "
                "Pass num_labels >= 1, or leave it out (2 labels)."
            )
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            raise ValueError(
                f"Unknown problem_type. Received: problem_type={self.problem_type!r}. Use one of {PROBLEM_TYPES} "
                "or None (chosen from the labels)."
            )
        if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
            raise ValueError(
                "`classifier_dropout` must be None or in [0, 1). Received: "
                f"classifier_dropout={self.classifier_dropout!r}."
            )
        if self.summary_type not in SUMMARY_TYPES:
            raise ValueError(
                f"Unsupported summary_type. Received: summary_type={self.summary_type!r}. Use one of {SUMMARY_TYPES}."
            )
        # transformers only warns here (its tiny test configs keep the 50256 defaults with small vocabularies), so
        # the same config.json files load in both; such a token is simply never produced.
        for name in ("bos_token_id", "pad_token_id", "eos_token_id"):
            value = getattr(self, name)
            values = value if isinstance(value, (list, tuple)) else ([] if value is None else [value])
            if any(not 0 <= v < self.vocab_size for v in values):
                logger.warning("%s=%s is outside the vocabulary (vocab_size=%d).", name, value, self.vocab_size)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """`eos_token_id` as a tuple (transformers allows an int or a list)."""
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, (list, tuple)):
            return tuple(int(x) for x in self.eos_token_id)
        return (int(self.eos_token_id),)

    # -- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The `config.json` content, transformers' key names, unknown keys included."""
        out: dict[str, Any] = {"model_type": self.model_type}
        out.update(self.extra)
        for key in _DEFAULTS:
            out[key] = copy.deepcopy(getattr(self, key))
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GPT2Config":
        data = dict(data)
        model_type = data.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ValueError(
                f"This config is not a GPT-2 config. Received: model_type={model_type!r}. "
                "Use a GPT-2 checkpoint (model_type 'gpt2')."
            )
        data.update(overrides)
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GPT2Config":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"config.json is not UTF-8 text (a UTF-16 file, or a weights file given as the config?). Received: "
                f"path={str(path)!r} ({e.reason} at byte {e.start}). Save it as UTF-8 JSON, or pass the checkpoint "
                "directory."
            ) from e
        except json.JSONDecodeError as e:
            raise ValueError(f"config.json is not valid JSON. Received: path={str(path)!r} ({e}).") from e
        if not isinstance(data, dict):
            raise ValueError(f"config.json must hold a JSON object. Received: path={str(path)!r}.")
        return cls.from_dict(data)

    @classmethod
    def from_preset(cls, name: str, *, strict: bool = True, **overrides: Any) -> "GPT2Config":
        """A released model's config without any download, e.g. `GPT2Config.from_preset("gpt2-medium", n_layer=4)`.

        Args:
            name: A key of `PRESETS` or `PRESET_ALIASES`.
            strict: Refuse override names that are not config fields (`n_layers=1`, a typo, would otherwise be kept
                as an unknown key and the preset trained unchanged); False keeps them in `extra`.
            **overrides: Config fields to change.
        """
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset. Received: name={name!r}. Use one of {sorted(PRESETS)}.")
        return cls(**PRESETS[key]).update_fields(overrides, strict=strict, source=f"the overrides of preset {name!r}")

    def update_fields(
        self, overrides: Mapping[str, Any], *, strict: bool = True, source: str = "config overrides"
    ) -> "GPT2Config":
        """Set config fields in place (the generic names and `num_labels` / `id2label` included), then validate;
        returns the config. What `from_pretrained(**kwargs)`, presets and `gpt2 train --set KEY=VALUE` use.

        Args:
            overrides: Field name -> value.
            strict: A name that is neither a field (`config_field_names()`) nor a key this config already holds
                in `extra` is a ValueError naming it, with the closest field as a suggestion. With False such
                names are kept in `extra` (written back to config.json).
            source: Where the names came from, for the error (e.g. "--set").
        """
        if strict:
            check_field_names(list(overrides), source, known=self.extra)
        overrides = dict(overrides)
        if "id2label" in overrides and "label2id" not in overrides:
            overrides["label2id"] = {v: k for k, v in _id2label(overrides["id2label"]).items()}
        for key, value in overrides.items():
            if key == "id2label":
                self.id2label = _id2label(value)
            elif key in _DEFAULTS or key in ATTRIBUTE_MAP or key in ("num_labels", "label2id"):
                setattr(self, key, value)
            else:
                self.extra[key] = value
        self.validate()
        return self

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "GPT2Config":
        """Read `config.json` from a local directory (or file) or a Hub id.

        Args:
            name_or_path: Local directory, `config.json` path, or Hub id.
            **kwargs: The Hub keyword arguments `gpt2_core.hub.HUB_KWARGS` (`revision`, `cache_dir`, `token`,
                `local_files_only`, `force_download`, `subfolder`), which the weights get too; any other keyword
                overrides that config field.
        """
        from gpt2_core.hub import HUB_KWARGS, resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        path = resolve_file(name_or_path, CONFIG_NAME, **hub_kwargs)
        config = cls.from_json_file(path)
        # Keys that are no field are kept in `extra` (transformers drops them silently; here they are written back).
        return config.update_fields(kwargs, strict=False)

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `config.json` into `save_directory` (created if needed), atomically."""
        from gpt2_core.hub import atomic_write_text

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CONFIG_NAME
        atomic_write_text(path, self.to_json_string())
        return path

    def copy(self, **overrides: Any) -> "GPT2Config":
        return type(self).from_dict(self.to_dict(), **overrides)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GPT2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"))
        return f"GPT2Config({fields}, ...)"
