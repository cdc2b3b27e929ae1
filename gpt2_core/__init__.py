"""gpt2_core: the framework-neutral core of GPT-2 (config, tokenizers, weight names, NumPy reference, outputs).

Imports only the standard library, NumPy and `regex`; never torch, tensorflow or jax.
"""

from gpt2_core.config import GPT2Config
from gpt2_core.outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    ModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The tokenizers load their vocabulary tables on first use; import them lazily to keep `import gpt2_core` light.
    if name in ("GPT2Tokenizer", "GPT2TokenizerFast"):
        from gpt2_core import tokenization

        return getattr(tokenization, name)
    raise AttributeError(f"module 'gpt2_core' has no attribute {name!r}")

__all__ = [
    "GPT2Config",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "ModelOutput",
    "BaseModelOutputWithPastAndCrossAttentions",
    "CausalLMOutputWithCrossAttentions",
    "GPT2DoubleHeadsModelOutput",
    "QuestionAnsweringModelOutput",
    "SequenceClassifierOutputWithPast",
    "TokenClassifierOutput",
]
