"""The `gpt2` command: `gpt2 generate`, `gpt2 convert`, `gpt2 verify`, `gpt2 train`, `gpt2 serve`; and `gpt2-convert`.

    gpt2 generate "ROMEO:"                                   # the shipped default model, PyTorch
    gpt2 generate --backend flax --model DIR_OR_HUB_ID "Once upon a time" --max-new-tokens 40
    gpt2 generate --backend tf --do-sample --temperature 0.8 --top-p 0.95 --seed 0 "ROMEO:"
    gpt2 generate --no-do-sample --num-beams 4 --num-return-sequences 2 --stats "ROMEO:"
    gpt2 generate --stop "JULIET:" --repetition-penalty 1.2 "ROMEO:"
    gpt2 -v convert SRC -o DST --to tf --verify              # = gpt2-convert ... (-v: debug log, tracebacks)

`gpt2 generate` streams the text as it is produced when it makes one sequence (one prompt, no beams), and prints
the sequences at the end otherwise. Decoding flags left unset take the model's generation_config.json (for the
shipped model: sampling with the settings docs/generation.md explains), as `model.generate` does.

Backends are imported only when chosen (gpt2_apps.backends), so `gpt2 --help` works with any one framework
installed. Exit status and error format: gpt2_apps.errors (0 ok, 2 usage or bad input, 1 failure, 130 Ctrl-C; one
line on stderr, the traceback with -v).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

# Only the standard library and gpt2_apps.errors at import time: the console scripts import this module before
# `main` runs, and a Ctrl-C during numpy's / a framework's import must already find `main`'s handling (exit 130,
# one line). numpy, gpt2_core and the backends are imported inside the functions that use them.
from gpt2_apps.errors import EXIT_FAILURE, EXIT_OK, UsageError, interruptible, run_command

logger = logging.getLogger(__name__)

# = gpt2_apps.backends.BACKENDS (tests/test_faults.py checks they agree), spelled out so that `--help` and the
# parser need no numpy
BACKENDS = ("torch", "tf", "flax")
# located without importing gpt2_core (find_spec of a top-level package does not run it)
DEFAULT_MODEL_DIR = Path(importlib.util.find_spec("gpt2_core").origin).resolve().parent / "data" / "default-model"


def get_backend(name: str):
    """`gpt2_apps.backends.get_backend`, imported on first use (it imports numpy)."""
    from gpt2_apps.backends import get_backend as get

    return get(name)


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
    """The model's tokenizer; the shipped GPT-2 vocabulary only when the model has no tokenizer files at all.

    Corrupt or incomplete tokenizer files raise (ValueError naming the file): falling back to another vocabulary
    would silently turn the model's ids into the wrong text."""
    from gpt2_core.tokenization import GPT2Tokenizer

    from gpt2_core.hub import looks_like_path, resolve_file

    path = Path(model)
    if looks_like_path(model) and not path.exists():
        raise FileNotFoundError(
            f"No such model directory. Received: --model {model!r}. Check the path, or pass a Hub id such as "
            "'openai-community/gpt2'."
        )
    if not path.exists():
        # A Hub id: its config.json first, so a missing repo, an unreachable Hub (said at once, no network
        # retries: gpt2_core.hub.HubUnreachableError) or a file not in the offline cache is the one error line,
        # not a tokenizer warning followed by the model's error.
        resolve_file(model, "config.json")
    tokenizer_files = ("vocab.json", "merges.txt", "tokenizer.json")
    if path.is_dir() and not any((path / name).exists() for name in tokenizer_files):
        logger.info("No tokenizer files in %s; using the shipped GPT-2 vocabulary.", model)
        return GPT2Tokenizer()
    try:
        return GPT2Tokenizer.from_pretrained(model)
    except OSError as e:  # a Hub repo without tokenizer files, or unreachable (the model load then says which)
        if path.exists():
            raise
        logger.warning("No tokenizer files for %s (%s); using the shipped GPT-2 vocabulary.", model, e)
        return GPT2Tokenizer()


# `gpt2 generate` flags -> GenerationConfig fields. A flag left unset is not passed, so the model's
# generation_config.json (the shipped model's: gpt2_core/data/default-model) decides it.
GENERATE_FIELDS = {
    "max_new_tokens": "max_new_tokens", "min_new_tokens": "min_new_tokens", "do_sample": "do_sample",
    "num_beams": "num_beams", "num_return_sequences": "num_return_sequences", "length_penalty": "length_penalty",
    "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "repetition_penalty": "repetition_penalty",
    "no_repeat_ngram_size": "no_repeat_ngram_size", "stop": "stop_strings", "seed": "seed",
}


def generation_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields the command line sets (None: not given, the model's file decides)."""
    fields = {name: getattr(args, flag, None) for flag, name in GENERATE_FIELDS.items()}
    fields = {k: v for k, v in fields.items() if v is not None}
    # The command prints sequences: an output object asked for by a model's file is not wanted here.
    fields["return_dict_in_generate"] = False
    return fields


def model_generation_config(lm: Any, model: str):
    """The generation defaults `generate` starts from: the model's `generation_config` (its checkpoint's
    generation_config.json, else the model config's special tokens)."""
    from gpt2_core.generation_config import GenerationConfig

    gc = getattr(lm, "generation_config", None)
    return gc if gc is not None else GenerationConfig.from_pretrained_or_model_config(model, lm.config)


def count_new_tokens(ids: np.ndarray, prompt_length: int, eos_token_id: Sequence[int], pad_token_id: int) -> int:
    """Generated tokens over all rows: a row ends at its first eos id (counted); padding after a row ended is not."""
    import numpy as np

    total = 0
    for row in np.asarray(ids)[:, prompt_length:]:
        hits = np.flatnonzero(np.isin(row, list(eos_token_id))) if len(eos_token_id) else []
        if len(hits):
            total += int(hits[0]) + 1
            continue
        n = len(row)
        while n and row[n - 1] == pad_token_id:
            n -= 1
        total += n
    return total


def format_stats(*, prompt_tokens: int, new_tokens: int, sequences: int, seconds: float, first_token_s: float | None,
                 decode_tokens_per_s: float | None) -> str:
    """The `--stats` line (stderr): counts, wall time and rates, as key=value pairs."""
    parts = [f"prompt_tokens={prompt_tokens}", f"new_tokens={new_tokens}", f"sequences={sequences}",
             f"time_s={seconds:.3f}", f"tokens_per_s={new_tokens / seconds if seconds > 0 else float('inf'):.1f}"]
    if first_token_s is not None:
        parts.append(f"first_token_s={first_token_s:.3f}")
    if decode_tokens_per_s is not None:
        parts.append(f"decode_tokens_per_s={decode_tokens_per_s:.1f}")
    return "stats: " + " ".join(parts)


def cmd_generate(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from gpt2_core.generation import resolve_generation
    from gpt2_core.streamers import TextStreamer, TokenCounter

    backend = get_backend(args.backend).require()
    model = args.model or default_model()
    tokenizer = load_tokenizer(model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    prompts = args.prompt
    if any(not p for p in prompts):
        raise UsageError("A prompt is empty. Received: prompt=''. Pass some text to continue, e.g. \"ROMEO:\".")
    enc = tokenizer(prompts, padding=True, padding_side="left", return_tensors="np")
    input_ids = enc["input_ids"].astype(np.int64)
    mask = enc["attention_mask"].astype(np.int64)
    T = input_ids.shape[1]
    lm = backend.load("lm", model)
    fields = generation_fields(args)
    # Validate the flags against the model's defaults before generating (a bad value: one line, exit 2), and
    # learn what the call will do (the model's file may ask for beams or several sequences).
    settings = resolve_generation(lm.config, T, model_generation_config=model_generation_config(lm, model), **fields)
    stream = len(prompts) == 1 and settings.num_beams == 1 and settings.num_return_sequences == 1
    extra: dict[str, Any] = {}
    counter = None
    if stream:
        counter = TokenCounter(TextStreamer(tokenizer, skip_prompt=True, file=sys.stdout, skip_special_tokens=True))
        extra["streamer"] = counter
        sys.stdout.write(prompts[0])
        sys.stdout.flush()
    if settings.stop_strings:
        extra["tokenizer"] = tokenizer
    start = time.perf_counter()
    ids = backend.generate(lm, input_ids, attention_mask=mask, **fields, **extra)
    seconds = time.perf_counter() - start
    ids = np.asarray(ids)
    if not stream:
        nrs = settings.num_return_sequences
        for i in range(ids.shape[0]):
            text = prompts[i // nrs] + tokenizer.decode(ids[i, T:], skip_special_tokens=True)
            sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
            if i < ids.shape[0] - 1:
                sys.stdout.write("-" * 40 + "\n")
    sys.stdout.flush()
    if args.stats:
        new_tokens = (counter.new_tokens if counter is not None
                      else count_new_tokens(ids, T, settings.eos_token_id, settings.pad_token_id))
        sys.stderr.write(format_stats(
            prompt_tokens=int(mask.sum()), new_tokens=new_tokens, sequences=int(ids.shape[0]), seconds=seconds,
            first_token_s=counter.time_to_first_token if counter is not None else None,
            decode_tokens_per_s=counter.tokens_per_second if counter is not None else None,
        ) + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpt2", description="GPT-2 in PyTorch, TensorFlow and JAX/Flax.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr; tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,convert,verify,train,serve}")

    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("prompt", nargs="+", help="one or more prompts (several are batched with left padding)")
    g.add_argument("--backend", choices=BACKENDS, default="torch")
    g.add_argument("--model", default=None, help="local directory or Hub id (default: the shipped Shakespeare model)")
    unset = "default: the model's generation_config.json"
    g.add_argument("--max-new-tokens", type=int, default=None, help=f"tokens to generate ({unset}, else 20)")
    g.add_argument("--min-new-tokens", type=int, default=None, help=f"no eos before this many tokens ({unset})")
    g.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=None,
                   help=f"sample (--do-sample) or decode greedily / by beam search (--no-do-sample) ({unset})")
    g.add_argument("--num-beams", type=int, default=None, help=f"beam search with this many beams ({unset}, else 1)")
    g.add_argument("--num-return-sequences", type=int, default=None,
                   help="sequences per prompt (sampling, or <= --num-beams)")
    g.add_argument("--length-penalty", type=float, default=None, help="beam search: score / length ** this")
    g.add_argument("--temperature", type=float, default=None, help=f"sampling temperature ({unset})")
    g.add_argument("--top-k", type=int, default=None,
                   help=f"sample from the k most likely tokens, 0: all ({unset}, else 50)")
    g.add_argument("--top-p", type=float, default=None, help=f"nucleus sampling mass, 1.0: off ({unset})")
    g.add_argument("--repetition-penalty", type=float, default=None, help=f"> 1 discourages repeats ({unset})")
    g.add_argument("--no-repeat-ngram-size", type=int, default=None,
                   help=f"never repeat an n-gram of this size ({unset})")
    g.add_argument("--stop", action="append", default=None, metavar="TEXT",
                   help="stop a sequence after this text (repeatable; not with beam search)")
    g.add_argument("--seed", type=int, default=None, help="seed the sampler (reproducible output)")
    g.add_argument("--stats", action="store_true", help="print token counts and tokens/s to stderr at the end")
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
    """`gpt2 ...`. Ctrl-C at any point, the imports before a command runs included, is one line and exit 130."""
    return interruptible("gpt2", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
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


def verify_main(argv: Sequence[str] | None = None) -> int:
    """`gpt2-verify` (= `gpt2 verify`): `gpt2_apps.verify.main`, imported inside the guard, so Ctrl-C during its
    imports (numpy, the frameworks) is one line and exit 130 too."""
    return interruptible("gpt2-verify", lambda: _resolve("gpt2_apps.verify:main")(argv))


# -- gpt2-convert ------------------------------------------------------------------------------------------------


def convert_main(argv: Sequence[str] | None = None) -> int:
    """`gpt2-convert` (= `gpt2 convert`): `weights_convert.cli`, plus `--verify`, which runs both checkpoints
    through the installed backends (`gpt2_apps.verify.verify_pair`) after converting: exit 1 if they disagree.
    Ctrl-C at any point is one line and exit 130."""
    return interruptible("gpt2-convert", lambda: _convert_main(argv))


def _convert_main(argv: Sequence[str] | None) -> int:
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
