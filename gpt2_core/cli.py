"""The `gpt2` command: `gpt2 generate`, `gpt2 convert`, `gpt2 verify`, `gpt2 train`.

    gpt2 generate "ROMEO:"                                   # the shipped default model, PyTorch
    gpt2 generate --backend flax --model DIR_OR_HUB_ID "Once upon a time" --max-new-tokens 40
    gpt2 generate --backend tf --do-sample --temperature 0.8 --top-p 0.95 --seed 0 "ROMEO:"

Backends are imported only when chosen, so `gpt2 --help` works with any one framework installed.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "tf", "flax")
DEFAULT_MODEL_DIR = Path(__file__).resolve().with_name("data") / "default-model"


def default_model() -> str:
    """The model `gpt2 generate` uses without --model: the small GPT-2 shipped in the package, if present."""
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return str(DEFAULT_MODEL_DIR)
    return "openai-community/gpt2"


class UserError(Exception):
    """A problem with the command line or its inputs: reported in one line, exit status 2."""


def load_lm(backend: str, model: str) -> Any:
    """The LM-head model of `backend` loaded from a directory or Hub id."""
    if backend == "torch":
        from gpt2_torch import GPT2LMHeadModel

        return GPT2LMHeadModel.from_pretrained(model)
    if backend == "tf":
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from gpt2_tf import TFGPT2LMHeadModel

        return TFGPT2LMHeadModel.from_pretrained(model)
    if backend == "flax":
        from gpt2_flax import FlaxGPT2LMHeadModel

        return FlaxGPT2LMHeadModel.from_pretrained(model)
    raise UserError(f"Unknown backend. Received: --backend {backend}. Use one of {', '.join(BACKENDS)}.")


def generate_ids(backend: str, lm: Any, input_ids: np.ndarray, attention_mask: np.ndarray, **kwargs: Any) -> np.ndarray:
    """Run `lm.generate` of `backend` on NumPy inputs; returns NumPy ids (B, T + new)."""
    if backend == "torch":
        import torch

        out = lm.generate(torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask), **kwargs)
        return out.cpu().numpy()
    out = lm.generate(input_ids, attention_mask=attention_mask, **kwargs)
    return np.asarray(out)


def load_tokenizer(model: str):
    from gpt2_core.tokenization import GPT2Tokenizer

    path = Path(model)
    if path.is_dir() and not (path / "vocab.json").exists():
        logger.info("No tokenizer files in %s; using the shipped GPT-2 vocabulary.", model)
        return GPT2Tokenizer()
    try:
        return GPT2Tokenizer.from_pretrained(model)
    except (OSError, ValueError):
        return GPT2Tokenizer()


def cmd_generate(args: argparse.Namespace) -> int:
    model = args.model or default_model()
    tokenizer = load_tokenizer(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = args.prompt
    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
    lm = load_lm(args.backend, model)
    kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature, seed=args.seed)
    if args.top_k is not None:
        kwargs["top_k"] = args.top_k
    if args.top_p is not None:
        kwargs["top_p"] = args.top_p
    ids = generate_ids(args.backend, lm, enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64), **kwargs)
    T = enc["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        text = prompt + tokenizer.decode(ids[i, T:], skip_special_tokens=True)
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
        if len(prompts) > 1 and i < len(prompts) - 1:
            sys.stdout.write("-" * 40 + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 in PyTorch, TensorFlow and JAX/Flax.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("prompt", nargs="+", help="one or more prompts (several are batched with left padding)")
    g.add_argument("--backend", choices=BACKENDS, default="torch")
    g.add_argument("--model", default=None, help="local directory or Hub id (default: the shipped Shakespeare model)")
    g.add_argument("--max-new-tokens", type=int, default=60)
    g.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--seed", type=int, default=None)
    g.set_defaults(func=cmd_generate)

    for name, target in (("convert", "weights_convert.cli"), ("verify", "weights_convert.verify"), ("train", "gpt2_core.train_cli")):
        p = sub.add_parser(name, help=f"see gpt2-{name} --help", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, delegate=target)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in ("convert", "verify", "train"):
        import importlib

        target = {"convert": "weights_convert.cli", "verify": "weights_convert.verify", "train": "gpt2_core.train_cli"}[argv[0]]
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            sys.stderr.write(f"gpt2 {argv[0]}: not available ({e}).\n")
            return 2
        return int(module.main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        sys.stderr.write(f"gpt2 {args.command}: error: {e}\n")
        return 2
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"gpt2 {args.command}: error: {e}\n")
        return 2
    except ImportError as e:
        sys.stderr.write(
            f"gpt2 {args.command}: error: the {getattr(args, 'backend', '')} backend is not installed ({e}). "
            "Install it: pip install 'gpt2-frameworks[torch]' (or [tf], [flax], [all]).\n"
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
