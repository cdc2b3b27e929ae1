"""Convert GPT-2 checkpoints between safetensors, pytorch_model.bin, tf_model.h5, flax_model.msgpack and OpenAI's
original TF checkpoint, through the canonical form of `gpt2_core.naming`, without building a model.

    from weights_convert import convert, load_checkpoint
    convert("gpt2-tf-dir", "gpt2-safetensors-dir", to="safetensors")
    config, tensors, head = load_checkpoint("gpt2-tf-dir")

Command line: `gpt2-convert SRC -o DST --to {safetensors,pytorch,tf,flax,openai}` (see `weights_convert.cli`).
"""

from weights_convert.formats import (
    DTYPES,
    FORMATS,
    Checkpoint,
    config_from_hparams,
    convert,
    detect_format,
    load_checkpoint,
    open_checkpoint,
    save_checkpoint,
)

__all__ = [
    "DTYPES",
    "FORMATS",
    "Checkpoint",
    "config_from_hparams",
    "convert",
    "detect_format",
    "load_checkpoint",
    "open_checkpoint",
    "save_checkpoint",
]
