"""`tf_model.h5` as transformers 4.x's TFGPT2* classes save and load it (the Keras 2 HDF5 layout of `save_weights`),
read and written with h5py (no TensorFlow or Keras 2 needed). Shards: `tf_model-0000i-of-0000n.h5` + index.

References: transformers 4.46 `modeling_tf_utils.py` (`load_tf_weights_from_h5`, `save_pretrained`), Keras 2
`saving/legacy/hdf5_format.py` (`save_attributes_to_hdf5_group`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import Format, Listing, Source, corrupt, no_sharding, warn_unloadable_heads

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_ATTR_LIMIT = 64512  # bytes per HDF5 attribute (object header limit); Keras splits longer lists
_KERAS_VERSION = "2.15.0"  # what the files transformers 4.46 + TF 2.15 write say


def _h5py(action: str):
    try:
        import h5py
    except ImportError as e:
        raise ImportError(f"{action} tf_model.h5 needs h5py: pip install h5py") from e
    return h5py


def _h5_attr_list(group, name: str) -> list[str]:
    """Keras' chunked string-list attribute (`name` or `name0`, `name1`, ...), decoded."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, str | None]:
    """tf_model.h5 (or its shards): {name without the model-name prefix: ...}, and the head the Keras model name
    says (None if it says none)."""
    h5py = _h5py("Reading")
    out: Listing = {}
    model_names: set[str] = set()
    for path in files:
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise corrupt(path, e, "HDF5 file") from e
        closers.append(f.close)

        def add(name: str, dataset, p=path):
            if not isinstance(dataset, h5py.Dataset):
                raise ValueError(f"Not a transformers tf_model.h5: {name!r} is not a dataset. Received: path={str(p)!r}.")
            if name in out:
                raise ValueError(f"Weight names repeat in the HDF5 file(s). Received: {name!r} in {p.name}.")

            def load(d=dataset):
                try:
                    return np.asarray(d[()])
                except (OSError, ValueError, KeyError) as e:
                    raise corrupt(p, e, "HDF5 file") from e

            out[name] = (tuple(dataset.shape), dataset.dtype, load)

        try:
            layer_names = _h5_attr_list(f, "layer_names")
            if not layer_names:
                raise ValueError(
                    f"Not a transformers tf_model.h5: the file has no `layer_names` attribute. Received: "
                    f"path={str(path)!r}. Save the model with a transformers 4.x TF class's save_pretrained."
                )
            for layer in layer_names:
                obj = _h5_get(f, layer, path)
                if isinstance(obj, h5py.Dataset):  # a shard: datasets named like transformer/h_._0/.../weight:0
                    add(layer, obj)
                    continue
                for weight_name in _h5_attr_list(obj, "weight_names"):
                    # Keras names start with the model name (tfgpt2lm_head_model/...), which transformers ignores.
                    model_name, _, rest = weight_name.partition("/")
                    model_names.add(model_name)
                    add(rest, _h5_get(obj, weight_name, path, layer))
        except KeyError as e:
            raise corrupt(path, e, "HDF5 file") from e
    return out, _head_from_model_names(model_names)


def _h5_get(group, name: str, path: Path, layer: str | None = None):
    """`group[name]`; a name the file's own lists give but the file lacks is a missing key, named."""
    if name in group:
        return group[name]
    full = f"{layer}/{name}" if layer else name
    raise ValueError(
        f"The HDF5 file is missing a weight its layer list names: missing key {full!r}. Received: path={str(path)!r}. "
        "The file is incomplete (an interrupted save, or a dataset deleted); save or convert the model again."
    )


def _head_from_model_names(model_names: set[str]) -> str | None:
    # Keras' snake case changed over the years (tfgp_t2lm_head_model, tfgpt2lm_head_model); compare without `_`.
    reverse = {v.replace("_", ""): k for k, v in naming.TF_MODEL_NAMES.items()}
    heads = {reverse.get(n.replace("_", "")) for n in model_names} - {None}
    return heads.pop() if len(heads) == 1 else None


def _h5_set_attr_list(group, name: str, values: list[str]) -> None:
    """Keras' `save_attributes_to_hdf5_group`: byte strings, split into name0, name1, ... past the HDF5 limit."""
    data = np.asarray([v.encode("utf8") for v in values]) if values else np.asarray([])
    chunks = 1
    parts = [data]
    while any(p.nbytes > _HDF5_ATTR_LIMIT for p in parts):
        chunks += 1
        parts = np.array_split(data, chunks)
    if chunks == 1:
        group.attrs[name] = data
    else:
        for i, part in enumerate(parts):
            group.attrs[f"{name}{i}"] = part


def write(directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    """tf_model.h5 in the layout of Keras 2 `save_weights`, as transformers 4.x's TFGPT2* save and load it."""
    no_sharding("tf", max_shard_size)
    h5py = _h5py("Writing")
    if any(source.output_dtype(k).name == "bfloat16" for k in source.keys):
        raise ValueError(
            "tf_model.h5 cannot hold bfloat16 tensors (HDF5 has no bfloat16 type). Received: dtype=bfloat16. "
            "Use --dtype float32 or float16, or --to safetensors."
        )
    warn_unloadable_heads("tf", config, head)
    names = naming.file_names("tf_h5", config, head)
    model_name = naming.TF_MODEL_NAMES[head]
    layers: dict[str, list[str]] = {}  # Keras layer (first path component) -> its weight names, in order
    for key in source.keys:
        layer = names[key][0].split("/", 1)[0]
        layers.setdefault(layer, []).append(f"{model_name}/{names[key][0]}")
    path = directory / hub.TF_WEIGHTS_NAME
    with hub.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = "tensorflow"
            f.attrs["keras_version"] = _KERAS_VERSION
            _h5_set_attr_list(f, "layer_names", list(layers))
            groups = {}
            for layer, weight_names in layers.items():
                groups[layer] = f.create_group(layer)
                _h5_set_attr_list(groups[layer], "weight_names", weight_names)
            for key, value in source.items():
                name, layout = names[key]
                groups[name.split("/", 1)[0]].create_dataset(f"{model_name}/{name}", data=naming.to_file_layout(value, layout))
            top = f.create_group("top_level_model_weights")  # Keras >= 2.13 writes it (empty for these models)
            _h5_set_attr_list(top, "weight_names", [])
    return [path]


FORMAT = Format(
    name="tf",
    files=(hub.TF_WEIGHTS_NAME, hub.TF_WEIGHTS_INDEX_NAME),
    suffixes=(".h5", ".hdf5", hub.TF_WEIGHTS_INDEX_NAME),
    lister=list_tensors,
    writer=write,
    table="tf_h5",
    signature=lambda head: head.startswith(HDF5_SIGNATURE),
)
