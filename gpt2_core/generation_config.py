"""GenerationConfig: the arguments of `generate`, with transformers' field names, defaults and file.

`generation_config.json` written by transformers loads here unchanged and is written back the same way (only the
fields that differ from the defaults, plus the keys this library does not know, which round-trip untouched). The
defaults are transformers' effective ones (`GenerationConfig._get_default_generation_params` in v5): greedy, 20 new
tokens, and `top_k=50` once `do_sample=True`.

A transformers field this library does not implement (group beam search, contrastive search, watermarking,
assisted decoding, ...) is accepted while it holds its no-op value and refused by `validate()` otherwise, so a
checkpoint that asks for a decoding this library cannot do fails loudly instead of generating something else.

`gpt2_core.generation.resolve_generation` turns a GenerationConfig plus the call's overrides into the frozen
`GenerationSettings` every backend decodes with.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

GENERATION_CONFIG_NAME = "generation_config.json"

# transformers' fields this library does not implement, with their no-op values: accepted only at these values.
UNSUPPORTED_NOOP: dict[str, Any] = {
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "penalty_alpha": None,
    "constraints": None,
    "force_words_ids": None,
    "guidance_scale": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "watermarking_config": None,
    "prompt_lookup_num_tokens": None,
    "assistant_model": None,
    "dola_layers": None,
    "top_h": None,
    "low_memory": None,
    "max_time": None,
}
# Keys that describe the file or the cache, not the decoding: kept and written back, never refused.
PASSTHROUGH_KEYS = frozenset({
    "transformers_version", "_from_model_config", "decoder_start_token_id", "cache_implementation", "cache_config",
    "compile_config", "output_attentions", "output_hidden_states", "return_legacy_cache", "is_assistant",
    "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
    "assistant_lookbehind", "target_lookbehind", "max_cache_len", "token_healing", "disable_compile",
    "trust_remote_code", "generation_kwargs",
})


@dataclass
class GenerationConfig:
    """How `generate` decodes, with transformers' names and defaults (see the module docstring).

    Length: `max_new_tokens` (wins) or `max_length` (prompt + new; None: 20 new tokens), `min_new_tokens` /
    `min_length` (eos is suppressed until then). Strategy: greedy, sampling (`do_sample`), beam search
    (`num_beams > 1`, `length_penalty`, `early_stopping` True / False / "never"), beam sampling (both),
    `num_return_sequences`. Processors, in transformers' order (`gpt2_core.generation.PROCESSOR_ORDER`):
    `repetition_penalty`, `no_repeat_ngram_size`, `bad_words_ids`, min length, `forced_bos_token_id`,
    `forced_eos_token_id`, `remove_invalid_values`, `suppress_tokens`, `begin_suppress_tokens`, the caller's
    `logits_processor`, then with sampling `temperature`, `top_k`, `top_p`, `min_p`, `typical_p`, `epsilon_cutoff`,
    `eta_cutoff`, and `renormalize_logits` last. Stopping: `eos_token_id` (one or several), the length, and
    `stop_strings` (needs `tokenizer=` in `generate`). Outputs: `return_dict_in_generate`, `output_scores`,
    `output_logits`. `seed` is this library's: it seeds the sampler (transformers has no such field).
    """

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    early_stopping: bool | str = False
    do_sample: bool = False
    num_beams: int = 1
    use_cache: bool = True
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float | None = 1.0
    min_p: float | None = None
    typical_p: float | None = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: list[list[int]] | None = None
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | list[int] | None = None
    remove_invalid_values: bool = False
    suppress_tokens: list[int] | None = None
    begin_suppress_tokens: list[int] | None = None
    renormalize_logits: bool = False
    num_return_sequences: int = 1
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    stop_strings: str | list[str] | None = None
    seed: int | None = None
    # keys of a file this library does not model (see UNSUPPORTED_NOOP and PASSTHROUGH_KEYS), kept for the round trip
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The decoding fields (what `generate(**kwargs)` may override)."""
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    # ----- construction

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> "GenerationConfig":
        """From a `generation_config.json` dict (unknown keys kept in `extra`), then `overrides`."""
        if not isinstance(data, dict):
            raise ValueError(f"A generation config must be a JSON object. Received: {type(data).__name__}.")
        data = {**data, **overrides}
        known = set(cls.field_names())
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_model_config(cls, config: Any) -> "GenerationConfig":
        """The defaults for a model: bos / eos / pad ids from its GPT2Config (as transformers does)."""
        eos = getattr(config, "eos_token_id", None)
        return cls(
            bos_token_id=getattr(config, "bos_token_id", None),
            eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else eos,
            pad_token_id=getattr(config, "pad_token_id", None),
            extra={"_from_model_config": True},
        )

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "GenerationConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{GENERATION_CONFIG_NAME} is not valid JSON. Received: path={str(path)!r} ({e}).") from e
        if not isinstance(data, dict):
            raise ValueError(f"{GENERATION_CONFIG_NAME} must hold a JSON object. Received: path={str(path)!r}.")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, config_file_name: str | None = None, **kwargs: Any
    ) -> "GenerationConfig":
        """Read `generation_config.json` from a local directory (or the file) or a Hub id.

        Args:
            name_or_path: A directory, the JSON file, or a Hub id.
            config_file_name: Another file name than `generation_config.json`.
            **kwargs: The Hub keyword arguments (`gpt2_core.hub.HUB_KWARGS`); any other keyword overrides a field.
        """
        from gpt2_core.hub import HUB_KWARGS, resolve_file

        hub_kwargs = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
        path = resolve_file(name_or_path, config_file_name or GENERATION_CONFIG_NAME, **hub_kwargs)
        out = cls.from_json_file(path)
        out.update_strict(**kwargs)
        return out

    @classmethod
    def from_pretrained_or_model_config(
        cls, name_or_path: str | os.PathLike, config: Any, **hub_kwargs: Any
    ) -> "GenerationConfig":
        """What `from_pretrained` of a model attaches: the checkpoint's file if it has one, else the model defaults."""
        from gpt2_core.hub import resolve_file

        path = resolve_file(name_or_path, GENERATION_CONFIG_NAME, required=False, **hub_kwargs)
        return cls.from_json_file(path) if path is not None else cls.from_model_config(config)

    # ----- editing

    def update(self, **kwargs: Any) -> dict[str, Any]:
        """Set the given decoding fields; returns the keywords that are not fields (transformers' contract)."""
        names = set(self.field_names())
        unused = {}
        for key, value in kwargs.items():
            if key in names:
                setattr(self, key, value)
            else:
                unused[key] = value
        return unused

    def update_strict(self, **kwargs: Any) -> None:
        """`update`, refusing keywords that are not fields (a typo would otherwise be ignored)."""
        unused = self.update(**kwargs)
        if unused:
            raise ValueError(
                f"Unknown generation arguments. Received: {sorted(unused)}. Valid fields: "
                f"{', '.join(self.field_names())}."
            )

    def copy(self, **overrides: Any) -> "GenerationConfig":
        out = copy.deepcopy(self)
        out.update_strict(**overrides)
        return out

    # ----- checks

    def validate(self) -> None:
        """Refuse a non-default field this library does not implement (the other checks run per call, in
        `gpt2_core.generation.resolve_generation`, where the prompt and the model are known)."""
        for key, noop in UNSUPPORTED_NOOP.items():
            if key in self.extra and self.extra[key] not in (noop, None):
                raise ValueError(
                    f"{key} is not supported by this library. Received: {key}={self.extra[key]!r}. Remove it "
                    f"from the generation config (or set it to {noop!r})."
                )

    # ----- writing

    def to_dict(self) -> dict[str, Any]:
        """Every field, then the kept extra keys."""
        out = {name: copy.deepcopy(getattr(self, name)) for name in self.field_names()}
        out.update(copy.deepcopy(self.extra))
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults, and the extra keys (what the JSON file holds)."""
        default = type(self)()
        out = {
            name: copy.deepcopy(getattr(self, name))
            for name in self.field_names()
            if getattr(self, name) != getattr(default, name)
        }
        out.update(copy.deepcopy(self.extra))
        return out

    def to_json_string(self, use_diff: bool = True) -> str:
        return json.dumps(self.to_diff_dict() if use_diff else self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike, config_file_name: str | None = None) -> Path:
        """Write `generation_config.json` into `save_directory` (created if needed), atomically."""
        from gpt2_core.hub import atomic_write_text

        self.validate()
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / (config_file_name or GENERATION_CONFIG_NAME)
        atomic_write_text(path, self.to_json_string())
        return path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GenerationConfig) and self.to_dict() == other.to_dict()


def as_id_tuple(value: int | Sequence[int] | None) -> tuple[int, ...]:
    """None -> (), 5 -> (5,), [5, 6] -> (5, 6)."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if hasattr(value, "tolist"):
        v = value.tolist()
        return tuple(int(x) for x in v) if isinstance(v, list) else (int(v),)
    return (int(value),)
