"""OpenAI's original TF1 checkpoint of GPT-2 (`model.ckpt.index` + `.data-*`, `checkpoint`, `hparams.json`), read
with `tf.train.load_checkpoint` and written with `tf.compat.v1.train.Saver`; needs TensorFlow. The language model
only (tied embeddings); the optimizer state fine-tuning scripts leave (`.../Adam`, `global_step`) is skipped.

References: OpenAI gpt-2 `src/model.py`, transformers' `convert_gpt2_original_tf_checkpoint_to_pytorch.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import Format, Listing, Source, corrupt, no_sharding

HPARAMS_NAME = "hparams.json"
CHECKPOINT_PREFIX = "model.ckpt"
# OpenAI's release names the two tokenizer files differently (same content).
TOKENIZER_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}


def _tensorflow(action: str):
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"{action} an OpenAI TF checkpoint needs TensorFlow: pip install 'gpt2-frameworks[tf]'.") from e
    return tf


def is_checkpoint_dir(path: Path) -> bool:
    return (path / "checkpoint").is_file() or any(path.glob("*.index"))


def prefix_of(path: Path) -> Path:
    """The checkpoint prefix (`.../model.ckpt`) of an OpenAI checkpoint directory, prefix or `.index` file."""
    if path.is_dir():
        ckpt = path / "checkpoint"
        if ckpt.is_file():  # TF's text proto: model_checkpoint_path: "model-1000"
            for line in ckpt.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    prefix = Path(name) if os.path.isabs(name) else path / name
                    if Path(str(prefix) + ".index").is_file():
                        return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise ValueError(
                f"Expected one TF checkpoint (*.index) in the directory. Received: path={str(path)!r} holding "
                f"{[p.name for p in indexes]}. Pass the checkpoint prefix, e.g. {path / CHECKPOINT_PREFIX}."
            )
        return indexes[0].with_suffix("")
    if path.name.endswith(".index"):
        return path.with_suffix("")
    if ".data-" in path.name:
        return path.with_name(path.name.split(".data-")[0])
    return path


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, None]:
    """`files` is [the checkpoint prefix] (`locate`)."""
    (prefix,) = files
    tf = _tensorflow("Reading")
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as e:  # tf.errors.* (DataLossError, NotFoundError, ...) for bad files
        raise corrupt(prefix, e, "TensorFlow checkpoint") from e

    def load(name: str) -> np.ndarray:
        try:
            return np.asarray(reader.get_tensor(name))
        except Exception as e:
            raise corrupt(prefix, e, "TensorFlow checkpoint") from e

    listing = {
        name: (tuple(shape), np.dtype(dtypes[name].as_numpy_dtype), lambda n=name: load(n))
        for name, shape in shapes.items()
    }
    return listing, None


def config_from_hparams(path: str | os.PathLike) -> GPT2Config:
    """OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer) -> GPT2Config (other fields: GPT-2's)."""
    try:
        hp = json.loads(Path(path).read_text(encoding="utf-8"))
        kwargs = dict(
            vocab_size=int(hp["n_vocab"]),
            n_positions=int(hp["n_ctx"]),
            n_embd=int(hp["n_embd"]),
            n_head=int(hp["n_head"]),
            n_layer=int(hp["n_layer"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"Invalid {HPARAMS_NAME}. Received: path={str(path)!r} ({type(e).__name__}: {e}). Expected "
            "a JSON object with n_vocab, n_ctx, n_embd, n_head, n_layer."
        ) from e
    return GPT2Config(**kwargs, architectures=[naming.ARCHITECTURES["lm"]])


def write(directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    """OpenAI's TF1 checkpoint layout (model.ckpt.* + checkpoint + hparams.json), with tf.compat.v1.train.Saver."""
    if head not in ("base", "lm") or not config.tie_word_embeddings:
        raise ValueError(
            f"The OpenAI checkpoint format holds only the GPT-2 language model (tied embeddings). Received: "
            f"head={head!r}, tie_word_embeddings={config.tie_word_embeddings}. Use --to safetensors, or --head lm."
        )
    no_sharding("openai", max_shard_size)
    tf = _tensorflow("Writing")
    if any(source.output_dtype(k).name == "bfloat16" for k in source.keys):
        raise ValueError("Writing bfloat16 OpenAI checkpoints is not supported. Received: dtype=bfloat16. Use float32.")
    names = naming.file_names("openai", config, head)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        variables = []
        for key, value in source.items():  # one tensor at a time, fed (not baked into the graph: 2 GB proto limit)
            name, layout = names[key]
            value = naming.to_file_layout(value, layout)
            var = tf.compat.v1.get_variable(name, shape=value.shape, dtype=tf.as_dtype(value.dtype), use_resource=False)
            feed = tf.compat.v1.placeholder(var.dtype.base_dtype, shape=value.shape)
            sess.run(tf.compat.v1.assign(var, feed), {feed: value})
            variables.append(var)
        saver = tf.compat.v1.train.Saver(variables)
        saver.save(sess, str(directory / CHECKPOINT_PREFIX), write_meta_graph=False)
    hparams = {
        "n_vocab": config.vocab_size,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_layer": config.n_layer,
    }
    hub.atomic_write_text(directory / HPARAMS_NAME, json.dumps(hparams, indent=2) + "\n")
    return sorted(directory.glob(CHECKPOINT_PREFIX + "*")) + [directory / "checkpoint", directory / HPARAMS_NAME]


def locate(path: Path) -> tuple[list[Path], Path]:
    """([the checkpoint prefix], the directory beside it) of a directory, prefix, `.index` or `.data-*` path."""
    prefix = prefix_of(path)
    if not Path(str(prefix) + ".index").is_file():
        raise FileNotFoundError(f"No TF checkpoint index. Received: path={str(path)!r} (looked for {prefix}.index).")
    return [prefix], prefix.parent


def config_beside(directory: Path) -> GPT2Config | None:
    """The config of an OpenAI checkpoint directory without config.json: its hparams.json."""
    path = directory / HPARAMS_NAME
    return config_from_hparams(path) if path.is_file() else None


FORMAT = Format(
    name="openai",
    files=(),
    suffixes=(".index",),
    lister=list_tensors,
    writer=write,
    table="openai",
    claims=lambda name: name.endswith(".index") or ".data-" in name or name in ("checkpoint", HPARAMS_NAME),
    locator=locate,
    config_beside=config_beside,
    default_head="lm",
)
