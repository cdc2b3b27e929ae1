"""GPT-2 in TensorFlow (Keras 3, TensorFlow backend): transformers' TF GPT-2 classes, numerically identical to
gpt2_torch and gpt2_flax, with XLA-compiled generation and an in-graph tokenizer."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gpt2_core.config import GPT2Config  # noqa: E402
from gpt2_tf.cache import KVCache  # noqa: E402
from gpt2_tf.model import (  # noqa: E402
    TFGPT2DoubleHeadsModel,
    TFGPT2DoubleHeadsModelOutput,
    TFGPT2ForQuestionAnswering,
    TFGPT2ForSequenceClassification,
    TFGPT2ForTokenClassification,
    TFGPT2LMHeadModel,
    TFGPT2MainLayer,
    TFGPT2Model,
    TFGPT2PreTrainedModel,
)


def __getattr__(name: str):
    # The tokenizer builds lookup tables on use; import it lazily.
    if name == "TFGPT2Tokenizer":
        from gpt2_tf.tokenizer import TFGPT2Tokenizer

        return TFGPT2Tokenizer
    raise AttributeError(f"module 'gpt2_tf' has no attribute {name!r}")


__all__ = [
    "GPT2Config",
    "KVCache",
    "TFGPT2Model",
    "TFGPT2LMHeadModel",
    "TFGPT2DoubleHeadsModel",
    "TFGPT2DoubleHeadsModelOutput",
    "TFGPT2ForQuestionAnswering",
    "TFGPT2ForSequenceClassification",
    "TFGPT2ForTokenClassification",
    "TFGPT2MainLayer",
    "TFGPT2PreTrainedModel",
    "TFGPT2Tokenizer",
]
