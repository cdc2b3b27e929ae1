"""One adapter per framework: load or build a model, move NumPy in and out, run it, generate, set precision.

The `gpt2` CLI, `gpt2-verify` and the tests' `backend` fixture drive every backend through these adapters, so one
test body or one command runs on torch, tf and flax alike:

    from gpt2_apps.backends import get_backend
    b = get_backend("flax")                      # imports jax/flax now, not before
    b.highest_precision()                         # correctness runs: no TF32, XLA "highest"
    model = b.build("lm", config, canonical)      # a model holding exactly these canonical weights
    out = b.forward(model, "lm", input_ids=ids, attention_mask=mask, use_cache=True)  # NumPy fields
    ids = b.generate(model, ids, attention_mask=mask, max_new_tokens=8)                # NumPy ids

Inputs are NumPy (or Python scalars); outputs are dicts of NumPy arrays with the model's field names, tuples kept.
A returned `KVCache` becomes a `KVCacheArrays` (NumPy, the same fields) and goes back into that backend's `KVCache`
when passed as `past_key_values`; legacy tuples stay tuples. Nothing here is imported by a library module: this is
the application layer (gpt2_core <- weights_convert <- backends <- gpt2_apps).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from gpt2_apps.errors import NotInstalledError
from gpt2_core import reference
from gpt2_core.config import GPT2Config

BACKENDS = ("torch", "tf", "flax")

# Inputs that are floating point (everything else is token ids, positions, masks or integer labels).
_FLOAT_INPUTS = ("inputs_embeds", "encoder_hidden_states", "past_key_values")


@dataclass(frozen=True)
class KVCacheArrays:
    """A backend's `KVCache` as NumPy: per layer key and value (B, N, S_max, H) and the filled length.

    Args:
        key: Per layer keys.
        value: Per layer values.
        length: Filled positions.
    """

    key: tuple[np.ndarray, ...]
    value: tuple[np.ndarray, ...]
    length: int

    def to_legacy(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """transformers' tuple: per layer (k[:, :, :length], v[:, :, :length])."""
        L = self.length
        return tuple((k[:, :, :L], v[:, :, :L]) for k, v in zip(self.key, self.value))

    def __len__(self) -> int:
        return len(self.key)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.key[i], self.value[i]


def _is_kv_cache(value: Any) -> bool:
    return all(hasattr(value, a) for a in ("key", "value", "length", "to_legacy"))


class Backend:
    """The adapter of one framework. Subclasses fill in the framework's conversions and calls.

    Attributes:
        name: "torch", "tf" or "flax" (the `--backend` value and the test id).
        package: The backend's package (`gpt2_torch`, ...).
        framework: The module that must be importable for the backend to work.
    """

    name: str = ""
    package: str = ""
    framework: str = ""
    int_dtype: Any = np.int64

    def available(self) -> bool:
        """True when the framework is installed (checked without importing it)."""
        return importlib.util.find_spec(self.framework) is not None

    def require(self) -> "Backend":
        """self, or `NotInstalledError` (an ImportError) saying what to install."""
        if not self.available():
            raise NotInstalledError(not_installed_message(self.name))
        return self

    def highest_precision(self) -> None:
        """Full fp32 matmuls (no TF32, XLA "highest"): for correctness checks. Idempotent."""

    # -- models ----------------------------------------------------------------------------------------------------
    def model_classes(self) -> Mapping[str, type]:
        """head name (gpt2_core.naming.HEADS) -> model class."""
        return importlib.import_module(f"{self.package}.model").MODEL_CLASSES

    def model_class(self, head: str) -> type:
        classes = self.model_classes()
        if head not in classes:
            raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {', '.join(classes)}.")
        return classes[head]

    def build(self, head: str, config: GPT2Config, canonical: Mapping[str, np.ndarray], dtype: Any = None) -> Any:
        """A model of `head` holding exactly `canonical` (gpt2_core.naming names), in eval mode; `dtype` (e.g.
        "float16", "bfloat16") casts the parameters after loading."""
        cls = self.model_class(head)
        with reference.skip_init():
            model = self._construct(cls, config.copy(), dtype)
        model.load_canonical(dict(canonical))
        return self._finish(model, dtype)

    def _construct(self, cls: type, config: GPT2Config, dtype: Any) -> Any:
        return cls(config)

    def _finish(self, model: Any, dtype: Any) -> Any:
        return model

    def load(self, head: str, name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """`from_pretrained` of the head's class (a directory or Hub id; kwargs as that method takes)."""
        return self.model_class(head).from_pretrained(name_or_path, **kwargs)

    def save(self, model: Any, directory: str | os.PathLike, **kwargs: Any) -> None:
        model.save_pretrained(directory, **kwargs)

    def canonical(self, model: Any) -> dict[str, np.ndarray]:
        """The model's weights as a canonical dict (gpt2_core.naming)."""
        return model.canonical_state_dict()

    # -- NumPy in and out ------------------------------------------------------------------------------------------
    def tensor(self, array: np.ndarray) -> Any:
        """A NumPy array as this framework's tensor (same dtype)."""
        raise NotImplementedError

    def to_numpy(self, value: Any) -> Any:
        """A framework tensor (or a tuple of them, or a KVCache) as NumPy; floats as float32."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if _is_kv_cache(value):
            return KVCacheArrays(
                key=tuple(self.to_numpy(k) for k in value.key),
                value=tuple(self.to_numpy(v) for v in value.value),
                length=int(np.asarray(self._array(value.length))),
            )
        if isinstance(value, (tuple, list)):
            return tuple(self.to_numpy(v) for v in value)
        arr = self._array(value)
        return arr.astype(np.float32) if arr.dtype.kind == "f" or arr.dtype.name == "bfloat16" else arr

    def _array(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def to_backend(self, value: Any, name: str = "") -> Any:
        """NumPy input `name` as the model takes it: floats float32, ids this backend's int dtype; tuples and
        `KVCacheArrays` kept as such (the latter as this backend's KVCache)."""
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, KVCacheArrays):
            cache = importlib.import_module(f"{self.package}.cache").KVCache
            return cache(
                key=tuple(self.to_backend(k, name) for k in value.key),
                value=tuple(self.to_backend(v, name) for v in value.value),
                length=self._length(value.length),
            )
        if _is_kv_cache(value):
            return value
        if isinstance(value, (tuple, list)):
            return tuple(self.to_backend(v, name) for v in value)
        arr = np.asarray(value)
        if name in _FLOAT_INPUTS or (name == "labels" and arr.dtype.kind == "f"):
            return self.tensor(arr.astype(np.float32))
        return self.tensor(arr.astype(self.int_dtype))

    def _length(self, length: int) -> Any:
        return self.tensor(np.asarray(length, np.int32))

    # -- running ---------------------------------------------------------------------------------------------------
    def forward(self, model: Any, head: str, **inputs: Any) -> dict[str, Any]:
        """Call the model on NumPy inputs; every output field as NumPy (None kept)."""
        kwargs = {k: self.to_backend(v, k) for k, v in inputs.items()}
        out = self._call(model, kwargs)
        return {k: self.to_numpy(v) for k, v in out.items()}

    def _call(self, model: Any, kwargs: dict[str, Any]) -> Any:
        return model(**kwargs)

    def generate(self, model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, **kwargs: Any) -> np.ndarray:
        """`model.generate` on NumPy ids (B, T) and mask; returns NumPy ids (B, T + new)."""
        mask = None if attention_mask is None else self._generate_input(attention_mask)
        out = model.generate(self._generate_input(input_ids), attention_mask=mask, **kwargs)
        return self._array(out)

    def _generate_input(self, array: np.ndarray) -> Any:
        return np.asarray(array, self.int_dtype)

    # -- training --------------------------------------------------------------------------------------------------
    def train(self, train_config: Any, progress: bool = True) -> dict:
        """Run the training loop (gpt2_core.training) with this backend; returns the final metrics."""
        return importlib.import_module(f"{self.package}.training").train(train_config, progress=progress)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class TorchBackend(Backend):
    name, package, framework = "torch", "gpt2_torch", "torch"

    @property
    def torch(self):
        import torch

        return torch

    def highest_precision(self) -> None:
        torch = self.torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")

    def _construct(self, cls: type, config: GPT2Config, dtype: Any) -> Any:
        model = cls(config)
        if any(p.is_meta for p in model.parameters()):  # built on the meta device inside skip_init()
            model = model.to_empty(device="cpu")
            model.tie_weights()
        return model

    def _finish(self, model: Any, dtype: Any) -> Any:
        if dtype is not None:
            model = model.to(getattr(self.torch, dtype) if isinstance(dtype, str) else dtype)
        return model.eval()

    def tensor(self, array: np.ndarray) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(array))

    def _array(self, value: Any) -> np.ndarray:
        if hasattr(value, "detach"):
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.float()
            return value.numpy()
        return np.asarray(value)

    def _length(self, length: int) -> Any:
        return self.torch.tensor(int(length))

    def _call(self, model: Any, kwargs: dict[str, Any]) -> Any:
        with self.torch.no_grad():
            return model(**kwargs)

    def _generate_input(self, array: np.ndarray) -> Any:
        return self.tensor(np.asarray(array, np.int64))


class TFBackend(Backend):
    name, package, framework = "tf", "gpt2_tf", "tensorflow"

    @property
    def tf(self):
        os.environ.setdefault("KERAS_BACKEND", "tensorflow")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        return tf

    def model_classes(self) -> Mapping[str, type]:
        self.tf  # KERAS_BACKEND before keras is imported
        return super().model_classes()

    def highest_precision(self) -> None:
        self.tf.config.experimental.enable_tensor_float_32_execution(False)

    def _construct(self, cls: type, config: GPT2Config, dtype: Any) -> Any:
        # Keras fixes the dtype policy at construction: "float16", "bfloat16", ...
        return cls(config) if dtype is None else cls(config, dtype=str(dtype))

    def tensor(self, array: np.ndarray) -> Any:
        return self.tf.constant(array)

    def _array(self, value: Any) -> np.ndarray:
        tf = self.tf
        if isinstance(value, (tf.Tensor, tf.Variable)) and value.dtype in (tf.bfloat16, tf.float16):
            value = tf.cast(value, tf.float32)
        return np.asarray(value)

    def _call(self, model: Any, kwargs: dict[str, Any]) -> Any:
        return model(**kwargs, training=False)


class FlaxBackend(Backend):
    name, package, framework = "flax", "gpt2_flax", "flax"
    int_dtype = np.int32

    @property
    def jnp(self):
        import jax.numpy as jnp

        return jnp

    def highest_precision(self) -> None:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")

    def load(self, head: str, name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
        """`from_pretrained`, with `dtype` meaning what it means in the other backends (weights and computation in
        that dtype): gpt2_flax follows transformers 4.x, where `dtype` is only the computation dtype and
        `param_dtype` the storage one, so both are passed unless the caller set `param_dtype`."""
        if kwargs.get("dtype") is not None and "param_dtype" not in kwargs:
            kwargs["param_dtype"] = kwargs["dtype"]
        return super().load(head, name_or_path, **kwargs)

    def _finish(self, model: Any, dtype: Any) -> Any:
        if dtype is not None:
            from gpt2_flax.weights import cast_params

            cast_params(model, dtype)
        model.eval()
        return model

    def tensor(self, array: np.ndarray) -> Any:
        return self.jnp.asarray(array)

    def _array(self, value: Any) -> np.ndarray:
        arr = np.asarray(value)
        return arr.astype(np.float32) if arr.dtype.name in ("bfloat16", "float16") else arr

    def generate(self, model: Any, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, **kwargs: Any) -> Any:
        """`model.generate` on NumPy ids (B, T) and mask; returns NumPy ids (B, T + new) like the other backends.
        gpt2_flax always returns an output object (transformers 4.x Flax style): with `return_dict_in_generate`
        it is returned as is, else its `sequences`."""
        mask = None if attention_mask is None else self._generate_input(attention_mask)
        out = model.generate(self._generate_input(input_ids), attention_mask=mask, **kwargs)
        return out if kwargs.get("return_dict_in_generate") else self._array(out.sequences)


_REGISTRY: dict[str, type[Backend]] = {"torch": TorchBackend, "tf": TFBackend, "flax": FlaxBackend}
_INSTANCES: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The adapter of backend `name` (one instance per name). Imports nothing of the framework until used."""
    if name not in _REGISTRY:
        raise ValueError(f"Unknown backend. Received: backend={name!r}. Use one of {', '.join(BACKENDS)}.")
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]


def available_backends() -> list[str]:
    """The backends whose framework is installed here, in BACKENDS order."""
    return [name for name in BACKENDS if get_backend(name).available()]


def not_installed_message(name: str) -> str:
    return (
        f"The {name} backend is not installed (no module {get_backend(name).framework!r}). "
        f"Install it: pip install 'gpt2-frameworks[{name}]' (or [all])."
    )
