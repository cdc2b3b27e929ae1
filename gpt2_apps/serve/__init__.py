"""`gpt2 serve`: an OpenAI-compatible completions server and a Write With Transformer page, in any backend.

    gpt2 serve                                   # the shipped default model, PyTorch, http://127.0.0.1:8000
    gpt2 serve --backend flax --model DIR_OR_HUB_ID --port 8080 --api-key "$KEY"
    python -m gpt2_apps.serve --backend tf       # the same without the `gpt2` entry point

Parts: `engine` (batching of concurrent requests into `generate` rounds, no web code), `api` (the Starlette app:
routes, validation, OpenAI's JSON and SSE shapes), this module (loading, the command line, `ServerThread` to run
a server inside a process, as tests and benchmarks do). See docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from gpt2_apps.backends import BACKENDS
from gpt2_apps.serve.engine import Engine, ModelRunner, QueueFull, Request, Sampling, ShuttingDown, load_model

__all__ = [
    "BACKENDS", "Engine", "ModelRunner", "QueueFull", "Request", "Sampling", "ShuttingDown", "ServerThread",
    "add_arguments", "build_app", "default_model", "load_model", "load_tokenizer", "main", "run_from_args",
]

logger = logging.getLogger(__name__)


def default_model() -> str:
    """The model served without --model: the small GPT-2 shipped in gpt2_core/data/default-model (as
    `gpt2 generate`), else the Hub's gpt2."""
    import gpt2_core

    path = Path(gpt2_core.__file__).resolve().parent / "data" / "default-model"
    return str(path) if (path / "config.json").exists() else "openai-community/gpt2"


def load_tokenizer(model: str) -> Any:
    """The model's tokenizer files, else the GPT-2 vocabulary shipped in gpt2_core (`gpt2_apps.cli.load_tokenizer`)."""
    from gpt2_apps.cli import load_tokenizer as load

    return load(model)


def model_id_of(model: str) -> str:
    """The id clients pass as `model`: the shipped model is `gpt2-default`, a directory its name, a Hub id itself."""
    if model == default_model() and Path(model).is_dir():
        return "gpt2-default"
    path = Path(model)
    return path.resolve().name if path.is_dir() else model


def build_app(backend: str = "torch", model: str | None = None, *, lm: Any = None, model_id: str | None = None,
              api_key: str | None = None, max_batch: int = 32, max_pending: int = 256, round_tokens: int = 16,
              batch_wait_ms: float = 10.0, max_n: int = 16, warmup: bool = False):
    """The ASGI app serving `model` (default: the shipped one) in `backend`; pass `lm` to serve a loaded model."""
    from gpt2_apps.serve.api import create_app

    model = model or default_model()
    lm = lm if lm is not None else load_model(backend, model)
    tokenizer = load_tokenizer(model)
    engine = Engine(ModelRunner(backend, lm), tokenizer, max_batch=max_batch, max_pending=max_pending,
                    round_tokens=round_tokens, batch_wait_s=batch_wait_ms / 1000.0)
    if warmup:
        logger.info("warmed up %d batch shapes", engine.warmup())
    return create_app(engine, tokenizer, backend=backend, model_id=model_id or model_id_of(model), api_key=api_key,
                      max_n=max_n)


class ServerThread:
    """Run an app with uvicorn on a background thread (tests, benchmarks, notebooks): `with ServerThread(app) as s:`
    then `s.url`. Binds 127.0.0.1 on a free port unless told otherwise; leaving the block shuts it down gracefully.

    Args:
        app: An ASGI app (e.g. `build_app(...)`).
        host: Address to bind.
        port: Port (0: a free one).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, graceful_timeout_s: float = 5.0) -> None:
        import uvicorn

        self.app = app
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=graceful_timeout_s,
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="gpt2-serve-uvicorn")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "ServerThread":
        self.thread.start()
        import time

        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"The server did not start within {timeout} s.")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `gpt2 serve` (added to an existing (sub)parser)."""
    parser.add_argument("--backend", choices=BACKENDS, default="torch")
    parser.add_argument("--model", default=None, help="local directory or Hub id (default: the shipped model)")
    parser.add_argument("--model-id", default=None, help="the id clients pass as `model` (default: from --model)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("GPT2_SERVE_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 (default: $GPT2_SERVE_API_KEY, else none)")
    parser.add_argument("--max-batch", type=int, default=32, help="rows of one batched generate call at most")
    parser.add_argument("--max-pending", type=int, default=256,
                        help="sequences queued or decoding at once; more get 429")
    parser.add_argument("--round-tokens", type=int, default=16,
                        help="tokens per batching round (streaming granularity; requests join between rounds)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long an idle server waits for concurrent requests to batch together")
    parser.add_argument("--max-n", type=int, default=16, help="choices per request at most")
    parser.add_argument("--warmup", action="store_true",
                        help="compile every batch shape before serving (TF / Flax: first requests do not wait)")
    parser.add_argument("--graceful-timeout", type=float, default=30.0,
                        help="seconds SIGINT/SIGTERM waits for in-flight requests before cancelling them")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers: stop accepting, finish in-flight requests up to
    --graceful-timeout, then the app's shutdown cancels what is left)."""
    import uvicorn

    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        logger.warning("Serving on %s without --api-key: anyone who can reach this address can use the model.",
                       args.host)
    app = build_app(args.backend, args.model, model_id=args.model_id, api_key=args.api_key, max_batch=args.max_batch,
                    max_pending=args.max_pending, round_tokens=args.round_tokens, batch_wait_ms=args.batch_wait_ms,
                    max_n=args.max_n, warmup=args.warmup)
    service = app.state.service
    sys.stderr.write(f"gpt2 serve: {service.model_id} ({args.backend}) on http://{args.host}:{args.port}\n")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info" if getattr(args, "verbose", False) else "warning",
                timeout_graceful_shutdown=args.graceful_timeout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="gpt2 serve", description=__doc__.splitlines()[0]))
    parser.add_argument("-v", "--verbose", action="store_true", help="log requests to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_from_args(args)
    except ImportError as e:
        sys.stderr.write(f"gpt2 serve: error: a dependency is missing ({e}). Install: pip install "
                         "'gpt2-frameworks[serve,torch]' (or [serve,tf], [serve,flax], [all]).\n")
        return 2
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.stderr.write(f"gpt2 serve: error: {e}\n")
        return 2
