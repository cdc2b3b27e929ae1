"""Output types with transformers' class and field names, shared by the three backends.

They behave like transformers' `ModelOutput`: attribute access (`out.logits`), key access (`out["logits"]`), integer
indexing and `to_tuple()` over the fields that are set, in declaration order. The field holding the cache is
`past_key_values`: per layer a `(key, value)` pair shaped (B, N, S, H).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterator


@dataclass
class ModelOutput:
    """Base class: a dataclass that also indexes like a tuple of its non-None fields and like a dict."""

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPastAndCrossAttentions(ModelOutput):
    last_hidden_state: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None
    cross_attentions: Any = None


@dataclass
class CausalLMOutputWithCrossAttentions(ModelOutput):
    loss: Any = None
    logits: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None
    cross_attentions: Any = None


@dataclass
class GPT2DoubleHeadsModelOutput(ModelOutput):
    loss: Any = None
    mc_loss: Any = None
    logits: Any = None
    mc_logits: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: Any = None
    start_logits: Any = None
    end_logits: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: Any = None
    logits: Any = None
    past_key_values: Any = None
    hidden_states: Any = None
    attentions: Any = None


@dataclass
class TokenClassifierOutput(ModelOutput):
    loss: Any = None
    logits: Any = None
    hidden_states: Any = None
    attentions: Any = None


OUTPUT_CLASSES = (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """`generate(..., return_dict_in_generate=True)` for greedy decoding and sampling (transformers' class).

    sequences: (B * num_return_sequences, T + steps) ids. scores: per step the processed scores (B', V) that chose
    the token (`output_scores`); logits: per step the raw logits (`output_logits`). Steps after a row finished hold
    what the model computed for its padding, as in transformers.
    """

    sequences: Any = None
    scores: Any = None
    logits: Any = None
    attentions: Any = None
    hidden_states: Any = None
    past_key_values: Any = None


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """`generate(..., num_beams > 1, return_dict_in_generate=True)` (transformers' class).

    sequences: (B * num_return_sequences, T + steps); sequences_scores: (B * num_return_sequences,) the final beam
    scores (sum of log-probabilities / generated_length ** length_penalty; with `output_scores`); scores: per step
    the processed log-probabilities (B * num_beams, V) (`output_scores`); logits: per step the raw logits
    (`output_logits`); beam_indices: (B * num_return_sequences, steps) the flat beam index (b * num_beams + beam)
    each token came from, -1 after the end (always set, as in transformers v5).
    """

    sequences: Any = None
    sequences_scores: Any = None
    scores: Any = None
    logits: Any = None
    beam_indices: Any = None
    attentions: Any = None
    hidden_states: Any = None
    past_key_values: Any = None
