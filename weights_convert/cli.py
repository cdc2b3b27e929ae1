"""`gpt2-convert`: convert a GPT-2 checkpoint between formats.

    gpt2-convert SRC -o DST [--to {safetensors,pytorch,tf,flax,openai}] [--from FORMAT] [--dtype DTYPE]
                 [--max-shard-size 2GB] [--head HEAD] [--config config.json] [--force] [--verify] [-q | -v]

Exit codes: 0 success, 2 bad input (missing or corrupt files, a config that disagrees with the weights, an existing
output without --force, also one that appeared while converting: it is never replaced), 1 any other failure (a
missing optional dependency, a full disk, a disk error), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Errors
are one message on stderr, never a traceback (-v shows it). Interrupted or failed, the output is not created and the
temporary directory beside it is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback

from gpt2_core import hub
from gpt2_core.naming import HEADS
from weights_convert.conversion import convert
from weights_convert.formats import DTYPES, FORMATS

logger = logging.getLogger("weights_convert")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gpt2-convert",
        description="Convert a GPT-2 checkpoint between safetensors, pytorch_model.bin, tf_model.h5 (transformers "
        "4.x TF), flax_model.msgpack (transformers 4.x Flax) and OpenAI's original TF checkpoint. Tensors are "
        "renamed and re-laid-out tensor by tensor; no model is built.",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint directory, weights file, or OpenAI checkpoint prefix")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="output directory (must not exist)")
    p.add_argument("--to", choices=FORMATS, default="safetensors", help="output format (default: safetensors)")
    p.add_argument("--from", dest="src_format", choices=FORMATS, default=None, help="input format (default: detect)")
    p.add_argument(
        "--dtype", choices=DTYPES, default=None, help="cast floating tensors (default: keep the source dtype)"
    )
    p.add_argument(
        "--max-shard-size", default=None, metavar="SIZE",
        help="shard safetensors/pytorch outputs, e.g. 2GB or 500MB (default: one file)",
    )
    p.add_argument(
        "--head", choices=HEADS, default=None,
        help="task head to keep (default: detected from the tensor names, else config.json's architectures)",
    )
    p.add_argument("--config", default=None, metavar="PATH", help="config.json to use instead of the one beside SRC")
    p.add_argument("--force", action="store_true", help="replace DST if it exists (atomically, at the end)")
    p.add_argument("--verify", action="store_true", help="compare SRC and DST model outputs after converting")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when stderr is not a tty)")
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="errors only")
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    return p


def _error(message: str, args) -> None:
    print(f"gpt2-convert: error: {message}", file=sys.stderr)
    if getattr(args, "verbose", False):
        traceback.print_exc()


def _load_verify():
    """A `verify_pair(src, dst)` to run after converting, or None. The verifier builds models, so it lives above the
    backends (`gpt2_apps.verify`); the `gpt2-convert` console script (`gpt2_apps.cli.convert_main`) runs it itself,
    and this converter, which builds no model, never imports it. Tests and embedders may replace this hook."""
    return None


def _verify(src: str, dst: str) -> int:
    verify_pair = _load_verify()
    if verify_pair is None:
        print(
            "gpt2-convert: --verify needs the application layer (run `gpt2-convert` or `gpt2 convert`, from "
            "gpt2_apps) and a model backend; the conversion itself is done.",
            file=sys.stderr,
        )
        return EXIT_OK
    result = verify_pair(src, dst)
    if getattr(result, "ok", result) is False:
        print("gpt2-convert: verification failed: SRC and DST do not compute the same outputs.", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _convert(args) -> object:
    return convert(
        args.src,
        args.output,
        args.to,
        src_format=args.src_format,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        force=args.force,
        head=args.head,
        config=args.config,
        progress=False if args.no_progress or args.quiet else None,
    )


@contextlib.contextmanager
def _recording_sigint(state: dict):
    """Within the block, a SIGINT sets `state["interrupted"]` before the usual KeyboardInterrupt: a library that
    turns the interrupt raised inside its import into an error of its own (numpy: "ImportError: PyCapsule_Import
    could not import module 'datetime'") is still reported as an interrupt. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    if previous is signal.SIG_IGN:  # Ctrl-C ignored by whoever started us: keep it so
        yield
        return

    def handler(signum, frame):
        state["interrupted"] = True
        if callable(previous):
            previous(signum, frame)  # Python's default (or a caller's) handler: raises KeyboardInterrupt
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    state = {"interrupted": False}
    with _recording_sigint(state):
        return _main(argv, state)


def _main(argv: list[str] | None, state: dict) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with a usage message on bad arguments
    level = logging.ERROR if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    logging.getLogger("weights_convert").setLevel(level)
    try:
        with hub.sigterm_raises():  # SIGTERM cleans up like Ctrl-C
            out = _convert(args)
    except hub.Terminated:
        print("gpt2-convert: terminated; nothing was written.", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("gpt2-convert: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:
        if not state["interrupted"]:
            return _failed(args)
        print("gpt2-convert: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not args.quiet:
        print(f"Wrote {args.to} checkpoint to {out}", file=sys.stderr)
    if args.verify:
        try:
            return _verify(args.src, str(out))
        except Exception as e:
            _error(f"verification could not run: {type(e).__name__}: {e}", args)
            return EXIT_FAILURE
    return EXIT_OK


def _failed(args) -> int:
    """The exit status and one line of the exception being handled by `_main`."""
    try:
        raise  # the exception `_main` is handling
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError) as e:
        _error(str(e), args)
        return EXIT_BAD_INPUT
    except ImportError as e:
        _error(str(e), args)
        return EXIT_FAILURE
    except hub.DiskFullError as e:
        _error(str(e), args)
        return EXIT_FAILURE
    except Exception as e:  # permissions, a library bug: still one line, not a traceback
        _error(f"{type(e).__name__}: {e}", args)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
