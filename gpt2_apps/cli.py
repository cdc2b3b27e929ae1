"""The `gpt2` command: `gpt2 generate`, `gpt2 convert`, `gpt2 verify`, `gpt2 train`, `gpt2 serve`; and `gpt2-convert`.

    gpt2 generate "ROMEO:"                                   # the shipped default model, PyTorch
    gpt2 generate --backend flax --model DIR_OR_HUB_ID "Once upon a time" --max-new-tokens 40
    gpt2 generate --backend tf --do-sample --temperature 0.8 --top-p 0.95 --seed 0 "ROMEO:"
    gpt2 -v convert SRC -o DST --to tf --verify              # = gpt2-convert ... (-v: debug log, tracebacks)

Backends are imported only when chosen (gpt2_apps.backends), so `gpt2 --help` works with any one framework
installed. Exit status and error format: gpt2_apps.errors (0 ok, 2 usage or bad input, 1 failure, 130 Ctrl-C; one
line on stderr, the traceback with -v).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import gpt2_core
from gpt2_apps.backends import BACKENDS, get_backend
from gpt2_apps.errors import EXIT_FAILURE, EXIT_OK, run_command

logger = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(gpt2_core.__file__).resolve().parent / "data" / "default-model"
# Subcommands with a parser of their own: `gpt2 NAME ARGS` is `MODULE.main(ARGS)`.
DELEGATED = {
    "convert": "gpt2_apps.cli:convert_main",
    "verify": "gpt2_apps.verify:main",
    "train": "gpt2_apps.train_cli:main",
    "serve": "gpt2_apps.serve:main",
}


def default_model() -> str:
    """The model `gpt2 generate` uses without --model: the small GPT-2 shipped in the package, if present."""
    if (DEFAULT_MODEL_DIR / "config.json").exists():
        return str(DEFAULT_MODEL_DIR)
    return "openai-community/gpt2"


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
    backend = get_backend(args.backend).require()
    model = args.model or default_model()
    tokenizer = load_tokenizer(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = args.prompt
    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
    lm = backend.load("lm", model)
    kwargs: dict[str, Any] = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature, seed=args.seed)
    if args.top_k is not None:
        kwargs["top_k"] = args.top_k
    if args.top_p is not None:
        kwargs["top_p"] = args.top_p
    ids = backend.generate(lm, enc["input_ids"].astype(np.int64), attention_mask=enc["attention_mask"].astype(np.int64), **kwargs)
    T = enc["input_ids"].shape[1]
    for i, prompt in enumerate(prompts):
        text = prompt + tokenizer.decode(ids[i, T:], skip_special_tokens=True)
        sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
        if len(prompts) > 1 and i < len(prompts) - 1:
            sys.stdout.write("-" * 40 + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 in PyTorch, TensorFlow and JAX/Flax.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,convert,verify,train,serve}")

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

    helps = {"convert": "convert a checkpoint between formats (gpt2 convert --help)",
             "verify": "compare one checkpoint across the backends (gpt2 verify --help)",
             "train": "train or fine-tune (gpt2 train --help)",
             "serve": "serve a model over OpenAI's completions API (gpt2 serve --help)"}
    for name in DELEGATED:
        # Listed for --help only: main() hands `gpt2 NAME ...` to that command's own parser before this one runs.
        sub.add_parser(name, help=helps[name], add_help=False)
    return parser


def _command_index(argv: Sequence[str]) -> int:
    """Index of the subcommand: the first argument that is not one of gpt2's own options."""
    for i, a in enumerate(argv):
        if not a.startswith("-"):
            return i
    return len(argv)


def _leading_verbose(parser: argparse.ArgumentParser, leading: Sequence[str]) -> bool:
    """gpt2's own options before a delegated subcommand: -v, or -h (the full help)."""
    own = argparse.ArgumentParser(prog="gpt2", add_help=False)
    own.add_argument("-v", "--verbose", action="store_true")
    own.add_argument("-h", "--help", action="store_true")
    ns, unknown = own.parse_known_args(leading)
    if ns.help:
        parser.print_help()
        raise SystemExit(EXIT_OK)
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # exits 2
    return ns.verbose


def _resolve(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    i = _command_index(argv)
    if i < len(argv) and argv[i] in DELEGATED:
        # `gpt2 [-v] convert ...`: gpt2's own options come first, the rest belongs to the subcommand.
        command, rest = argv[i], argv[i + 1 :]
        verbose = _leading_verbose(parser, argv[:i])
        if verbose and not {"-v", "--verbose", "-q", "--quiet"} & set(rest):
            rest = ["-v", *rest]
        return run_command(f"gpt2 {command}", lambda: _resolve(DELEGATED[command])(rest), verbose)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_command(f"gpt2 {args.command}", lambda: args.func(args), args.verbose)


# -- gpt2-convert ------------------------------------------------------------------------------------------------


def convert_main(argv: Sequence[str] | None = None) -> int:
    """`gpt2-convert` (= `gpt2 convert`): `weights_convert.cli`, plus `--verify`, which runs both checkpoints
    through the installed backends (`gpt2_apps.verify.verify_pair`) after converting: exit 1 if they disagree."""
    from weights_convert import cli as convert_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    verify = "--verify" in argv
    rest = [a for a in argv if a != "--verify"]
    code = int(convert_cli.main(rest) or 0)
    if code != EXIT_OK or not verify:
        return code
    args = convert_cli.build_parser().parse_args(rest)
    verbose = bool(getattr(args, "verbose", False))

    def run() -> int:
        from gpt2_apps.verify import format_report, verify_pair

        report = verify_pair(args.src, args.output)
        if not getattr(args, "quiet", False):
            sys.stderr.write(format_report(report) + "\n")
        if not report.ok:
            sys.stderr.write("gpt2-convert: verification failed: SRC and DST do not compute the same outputs.\n")
            return EXIT_FAILURE
        return EXIT_OK

    return run_command("gpt2-convert --verify", run, verbose)


if __name__ == "__main__":
    sys.exit(main())
