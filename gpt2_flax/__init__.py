"""GPT-2 in JAX/Flax (`flax.nnx`): transformers' six GPT-2 classes, numerically identical to gpt2_torch and gpt2_tf.

transformers v5 removed its Flax models; these replace `FlaxGPT2Model`, `FlaxGPT2LMHeadModel`, ... with `flax.nnx`
modules that load and save the same checkpoints as the PyTorch classes.
"""

from gpt2_core.config import GPT2Config
from gpt2_flax.cache import KVCache
from gpt2_flax.model import (
    FlaxGPT2DoubleHeadsModel,
    FlaxGPT2ForQuestionAnswering,
    FlaxGPT2ForSequenceClassification,
    FlaxGPT2ForTokenClassification,
    FlaxGPT2LMHeadModel,
    FlaxGPT2Model,
    FlaxGPT2PreTrainedModel,
    default_rngs,
)

__all__ = [
    "GPT2Config",
    "FlaxGPT2Model",
    "FlaxGPT2LMHeadModel",
    "FlaxGPT2DoubleHeadsModel",
    "FlaxGPT2ForQuestionAnswering",
    "FlaxGPT2ForSequenceClassification",
    "FlaxGPT2ForTokenClassification",
    "FlaxGPT2PreTrainedModel",
    "KVCache",
    "default_rngs",
]
