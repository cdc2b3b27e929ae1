"""`gpt2 train`: the same flags and meaning for every backend.

    gpt2 train --backend torch --data ../shared/corpus/shakespeare --model gpt2 \\
        --set n_layer=4 --set n_embd=128 --set n_head=4 --block-size 128 --batch-size 16 --max-steps 2000 -o out/
    torchrun --nproc_per_node 2 -m gpt2_apps.train_cli --backend torch ...     # data parallel (DDP)

The loop is `gpt2_core.training`'s; the backend (gpt2_apps.backends) supplies its step. Prints the final metrics as
one JSON line. Exit status: gpt2_apps.errors (2 bad flags or data, 1 failure, 130 Ctrl-C, 143 SIGTERM; -v shows
tracebacks). An --output-dir holding an earlier run is refused unless --resume (which continues it, and refuses a
checkpoint of other settings or beyond --max-steps) or --force (which starts afresh).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import sys
from typing import Sequence

from gpt2_apps.backends import BACKENDS, get_backend
from gpt2_apps.errors import EXIT_OK, UsageError, run_command
from gpt2_core.config import check_field_names
from gpt2_core.training import PRECISIONS, TrainConfig


def _parse_set(items: Sequence[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE. Received: --set {item!r}. Example: --set n_layer=4.")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    try:
        check_field_names(out, "--set")  # before anything is loaded or written: exit 2, one line
    except ValueError as e:
        raise UsageError(str(e)) from None
    return out


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="gpt2 train", description="Train or fine-tune GPT-2 on text files.")
    p.add_argument("--backend", choices=BACKENDS, default="torch")
    p.add_argument("--data", nargs="+", required=True, help="text files or directories")
    p.add_argument("-o", "--output-dir", default=d.output_dir)
    p.add_argument("--model", default=d.model, help="preset (gpt2, gpt2-medium, ...), config.json, or a model dir to fine-tune")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (from scratch)")
    for name in ("block_size", "batch_size", "max_steps", "warmup_steps", "eval_every", "eval_batches", "save_every", "log_every", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("learning_rate", "min_lr_ratio", "weight_decay", "beta1", "beta2", "grad_clip", "eval_fraction"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its last checkpoint (the same settings; --max-steps may grow)")
    p.add_argument("--force", "--overwrite", dest="force", action="store_true",
                   help="start afresh in a non-empty --output-dir: the earlier run's checkpoints and metrics are removed")
    p.add_argument("--shard-params", action="store_true",
                   help="shard parameters and optimizer state over processes/devices (torch FSDP2, JAX NamedSharding)")
    p.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                   help="bf16: mixed precision, bfloat16 compute over float32 master weights (transformers' --bf16)")
    p.add_argument("--bf16", dest="precision", action="store_const", const="bf16", help="the same as --precision bf16")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging; show the traceback of an error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with a usage message on bad arguments
    # our packages at INFO (resume, fine-tuning notes); other libraries' INFO chatter (torch's at exit) stays off
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("gpt2_core", "gpt2_apps", "gpt2_torch", "gpt2_tf", "gpt2_flax", "weights_convert"):
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)

    def run() -> int:
        tc = TrainConfig(
            data=args.data, output_dir=args.output_dir, model=args.model, overrides=_parse_set(args.set),
            block_size=args.block_size, batch_size=args.batch_size, max_steps=args.max_steps,
            warmup_steps=args.warmup_steps, eval_every=args.eval_every, eval_batches=args.eval_batches,
            save_every=args.save_every, log_every=args.log_every, seed=args.seed, learning_rate=args.learning_rate,
            min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, beta1=args.beta1, beta2=args.beta2,
            grad_clip=args.grad_clip, eval_fraction=args.eval_fraction, dropout=args.dropout, resume=args.resume,
            force=args.force, shard_params=args.shard_params, precision=args.precision,
        )
        result = get_backend(args.backend).require().train(tc, progress=not args.no_progress)
        sys.stdout.write(json.dumps(result) + "\n")
        return EXIT_OK

    return run_command("gpt2 train", run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
