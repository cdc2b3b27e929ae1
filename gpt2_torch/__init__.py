"""GPT-2 in PyTorch: transformers' six GPT-2 classes, numerically identical to gpt2_tf and gpt2_flax."""

from gpt2_core.config import GPT2Config
from gpt2_torch.cache import KVCache
from gpt2_torch.model import (
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
)

__all__ = [
    "GPT2Config",
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2DoubleHeadsModel",
    "GPT2ForQuestionAnswering",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2PreTrainedModel",
    "KVCache",
]
