"""Convert GPT-2 checkpoints between safetensors, pytorch_model.bin, tf_model.h5, flax_model.msgpack and OpenAI's
original TF checkpoint, through the canonical form of `gpt2_core.naming`, without building a model.

    from weights_convert import convert, load_checkpoint
    convert("gpt2-tf-dir", "gpt2-safetensors-dir", to="safetensors")
    config, tensors, head = load_checkpoint("gpt2-tf-dir")

Layout: `weights_convert.formats` (the registry, one module per format), `weights_convert.conversion` (atomic
`save_checkpoint` / `convert`), `weights_convert.pretrained` (`load_pretrained` / `save_pretrained`, what the three
backends' `from_pretrained` / `save_pretrained` call). Layers: gpt2_core <- weights_convert <- backends.

Command line: `gpt2-convert SRC -o DST --to {safetensors,pytorch,tf,flax,openai}` (see `weights_convert.cli`).
"""

from weights_convert.conversion import convert, save_checkpoint
from weights_convert.formats import (
    DTYPES,
    FORMATS,
    Checkpoint,
    config_from_hparams,
    detect_format,
    load_checkpoint,
    open_checkpoint,
)
from weights_convert.pretrained import Pretrained, load_pretrained, save_pretrained

__all__ = [
    "DTYPES",
    "FORMATS",
    "Checkpoint",
    "Pretrained",
    "config_from_hparams",
    "convert",
    "detect_format",
    "load_checkpoint",
    "load_pretrained",
    "open_checkpoint",
    "save_checkpoint",
    "save_pretrained",
]
