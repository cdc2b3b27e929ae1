"""gpt2_flax beyond one device: starting `jax.distributed`, the `("data", "model")` mesh, where each parameter goes
(FSDP over "data", tensor parallel over "model"), a global batch fed from every process's rows, and bringing
sharded arrays back to the host for saving.

    initialize_distributed()                  # several processes: from JAX_COORDINATOR_ADDRESS ... or the cluster
    mesh = make_mesh(model=2)                 # every device of every process: (devices // 2, 2), ("data", "model")
    shardings = shard_model(model, mesh, fsdp=True)          # tensor parallel over "model", FSDP over "data"
    out = model.generate(ids, max_new_tokens=20)             # jit follows the parameters' shardings

Partition specs (`param_specs`), by flax parameter path (C n_embd, V vocab; a matrix is stored (in, out)):

    parameter                       tensor parallel ("model")     Megatron-LM role
    attn.c_attn.kernel (C, 3C)      P(None, "model")              column parallel (q, k, v outputs split)
    attn.c_attn.bias (3C,)          P("model")
    attn.c_proj.kernel (C, C)       P("model", None)              row parallel (XLA adds the all-reduce)
    mlp.c_fc.kernel (C, 4C)         P(None, "model")              column parallel
    mlp.c_fc.bias (4C,)             P("model")
    mlp.c_proj.kernel (4C, C)       P("model", None)              row parallel
    wte.embedding (V, C)            P("model", None) when V divides, else P(None, "model")
    lm_head.kernel (C, V) (untied)  P(None, "model") when V divides, else P("model", None)
    everything else                 replicated (LayerNorm, wpe, the row-parallel biases, other heads)

FSDP (`fsdp=True`) then shards each parameter of at least `min_size` elements over "data" along its biggest axis
that is not already split and that the data axis divides; when none is, the tensor-parallel axis is split over both
mesh axes if it divides (wte with 50257 rows: P(None, ("model", "data"))), else the parameter is replicated over
"data". The optax state follows its parameter (`state_shardings`). XLA's SPMD partitioner turns these placements
into all-gathers and reduce-scatters: the model code is the same in every layout, and any layout computes the same
function up to float summation order. One difference from Megatron-LM: c_attn's 3C columns are split in
contiguous blocks, not per head, so with a "model" axis above 1 the q/k/v split moves data between devices; the
results are unchanged.

References: JAX "Distributed arrays and automatic parallelization" and "Multi-process environments"
(`jax.distributed.initialize`, `jax.make_array_from_process_local_data`); flax NNX "Scale up on multiple devices";
Megatron-LM (Shoeybi et al. 2019) for the column/row split; PyTorch FSDP / ZeRO-3 for the data-axis split.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
MODEL_AXIS = "model"
ENV_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


# -- processes ---------------------------------------------------------------------------------------------------


def _launcher_processes() -> int:
    """How many processes a cluster launcher JAX auto-detects started (1 when none): a SLURM job step (`srun`),
    Open MPI (`mpirun`), or a multi-host TPU slice on GKE (`TPU_WORKER_HOSTNAMES`)."""
    env = os.environ
    if "SLURM_STEP_ID" in env and "SLURM_NTASKS" in env:
        return int(env["SLURM_NTASKS"])
    if "OMPI_MCA_orte_hnp_uri" in env and "OMPI_COMM_WORLD_SIZE" in env:
        return int(env["OMPI_COMM_WORLD_SIZE"])
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) or 1


def initialize_distributed() -> bool:
    """Call `jax.distributed.initialize` when the environment asks for several JAX processes; True when running
    distributed (now or already). Call it before anything else touches a JAX device.

    * Already initialized (a launcher script called `jax.distributed.initialize()` itself): nothing to do.
    * `JAX_COORDINATOR_ADDRESS` (host:port of process 0), `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`: the values set
      are passed, JAX's cluster detection fills in any left out.
    * A launcher JAX detects (SLURM `srun`, Open MPI `mpirun`, GKE TPU slices) that started more than one
      process: `jax.distributed.initialize()` with no arguments (JAX reads the cluster's own variables).
    * Otherwise one process: nothing is started.
    """
    if jax.distributed.is_initialized():
        return True
    env = {name: os.environ.get(name) for name in ENV_VARS}
    if any(env.values()):
        ints = {}
        for name, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
            if env[name] is not None:
                try:
                    ints[key] = int(env[name])
                except ValueError:
                    raise ValueError(
                        f"{name} must be an integer. Received: {name}={env[name]!r}. Set it to "
                        + ("the number of processes." if key == "num_processes" else "this process's index (0 ...).")
                    ) from None
        logger.info("jax.distributed.initialize(coordinator_address=%r, %s)", env["JAX_COORDINATOR_ADDRESS"], ints)
        jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], **ints)
        return True
    if _launcher_processes() > 1:
        logger.info("jax.distributed.initialize() from the cluster environment (%d processes)", _launcher_processes())
        jax.distributed.initialize()
        return True
    return False


def barrier(name: str) -> None:
    """Every process waits here until all arrive (no-op in one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


# -- mesh and partition specs ------------------------------------------------------------------------------------


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A `("data", "model")` mesh over `devices` (default: `jax.devices()`, every device of every process, in
    process order, so a process's devices hold neighbouring rows of the batch).

    Args:
        data: Size of the data axis; default `len(devices) // model`.
        model: Size of the tensor-parallel axis (1: none).
        devices: The devices; all of them must be used.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data is None:
        data = len(devices) // model if model >= 1 else 0
    if model < 1 or data < 1 or data * model != len(devices):
        raise ValueError(
            f"The mesh must use every device once. Received: data={data}, model={model} for {len(devices)} devices. "
            f"Choose data * model == {len(devices)}."
        )
    return Mesh(np.asarray(devices, dtype=object).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def _axis_size(mesh: Mesh, axis: str) -> int:
    return int(mesh.shape.get(axis, 1))


def _tensor_parallel(path: str, shape: tuple[int, ...], n: int) -> list[str | None]:
    """The "model" placement of one parameter by its flax path (the table in the module docstring)."""
    spec: list[str | None] = [None] * len(shape)
    axis = None
    if path.endswith(("attn.c_attn.kernel", "mlp.c_fc.kernel")):
        axis = 1
    elif path.endswith(("attn.c_attn.bias", "mlp.c_fc.bias")):
        axis = 0
    elif path.endswith(("attn.c_proj.kernel", "mlp.c_proj.kernel")):
        axis = 0
    elif path.endswith("wte.embedding"):
        axis = 0 if shape[0] % n == 0 else 1
    elif path.endswith("lm_head.kernel"):
        axis = 1 if shape[1] % n == 0 else 0
    if axis is not None:
        if shape[axis] % n == 0:
            spec[axis] = MODEL_AXIS
        else:
            logger.debug("%s %s: axis %d does not divide over %d devices; replicated over %r", path, shape, axis, n,
                         MODEL_AXIS)
    return spec


def param_spec(path: str, shape: Sequence[int], mesh: Mesh, *, fsdp: bool = False, tensor_parallel: bool = True,
               min_size: int = 0) -> PartitionSpec:
    """The `PartitionSpec` of the parameter at flax path `path` (see the module docstring).

    Args:
        path: Dotted flax path (`transformer.h.0.attn.c_attn.kernel`).
        shape: Its shape.
        mesh: A mesh with axes "data" and/or "model".
        fsdp: Also shard over "data" (parameters of at least `min_size` elements, biggest free axis it divides).
        tensor_parallel: Shard over "model" by the tensor-parallel table (when the mesh's model axis is above 1).
        min_size: Smallest parameter (elements) FSDP shards.
    """
    shape = tuple(int(d) for d in shape)
    n_model, n_data = _axis_size(mesh, MODEL_AXIS), _axis_size(mesh, DATA_AXIS)
    spec: list[str | None] = [None] * len(shape)
    if tensor_parallel and n_model > 1:
        spec = _tensor_parallel(path, shape, n_model)
    if fsdp and n_data > 1 and int(np.prod(shape, dtype=np.int64)) >= min_size:
        free = [i for i in range(len(shape)) if spec[i] is None and shape[i] % n_data == 0]
        # no free axis divides (wte's 50257 rows): split the tensor-parallel axis further, over both mesh axes
        both = [i for i in range(len(shape)) if spec[i] == MODEL_AXIS and shape[i] % (n_model * n_data) == 0]
        if free:
            spec[max(free, key=lambda i: (shape[i], -i))] = DATA_AXIS  # biggest axis; the first of equals
        elif both:
            spec[both[0]] = (MODEL_AXIS, DATA_AXIS)
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _param_vars(model: nnx.Module) -> dict[str, nnx.Variable]:
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def param_specs(model: nnx.Module, mesh: Mesh, *, fsdp: bool = False, tensor_parallel: bool = True,
                min_size: int = 0) -> dict[str, PartitionSpec]:
    """{flax parameter path: PartitionSpec} of every parameter of `model` (`param_spec`)."""
    return {path: param_spec(path, var.get_value().shape, mesh, fsdp=fsdp, tensor_parallel=tensor_parallel,
                             min_size=min_size)
            for path, var in _param_vars(model).items()}


def shard_model(model: nnx.Module, mesh: Mesh, *, fsdp: bool = False, tensor_parallel: bool = True,
                min_size: int = 0) -> dict[str, NamedSharding]:
    """Place `model`'s parameters on `mesh` by `param_specs` and its other state (dropout keys) replicated, in
    place; returns {flax parameter path: NamedSharding}. Works in one process or many (every process passes the
    same values: each keeps only the shards of its own devices)."""
    specs = param_specs(model, mesh, fsdp=fsdp, tensor_parallel=tensor_parallel, min_size=min_size)
    shardings = {path: NamedSharding(mesh, spec) for path, spec in specs.items()}
    for path, var in _param_vars(model).items():
        var.set_value(place(var.get_value(), shardings[path]))
    rest = nnx.state(model, nnx.Not(nnx.Param))
    if jax.tree.leaves(rest):
        replicated = NamedSharding(mesh, PartitionSpec())
        nnx.update(model, place(rest, jax.tree.map(lambda _: replicated, rest)))
    return shardings


def place(tree: Any, shardings: Any) -> Any:
    """Every array of `tree` (the same values on every process) as a global array with its sharding from
    `shardings` (one NamedSharding, or a tree of them matching `tree`): each process makes only the shards of its
    own devices (`jax.make_array_from_callback`), where `jax.device_put` would first compare the whole value
    across processes. PRNG keys keep their implementation."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)

    def leaf(x: Any, s: NamedSharding) -> Any:
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(leaf(jax.random.key_data(x), s), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, s, lambda index: host[index])

    return jax.tree.map(leaf, tree, shardings)


def state_shardings(tree: Any, shardings: Mapping[str, NamedSharding], mesh: Mesh) -> Any:
    """NamedShardings for an optimizer state over `{path: param}` dicts (optax's mu, nu, ...): a leaf under a
    parameter's path with that parameter's shape gets its sharding, anything else (step counts) is replicated."""
    replicated = NamedSharding(mesh, PartitionSpec())

    def leaf(key_path, value) -> NamedSharding:
        keys = [k.key for k in key_path if isinstance(k, jax.tree_util.DictKey)]
        for key in reversed(keys):
            if isinstance(key, str) and key in shardings:
                return shardings[key]
        return replicated

    return jax.tree_util.tree_map_with_path(leaf, tree)


# -- data --------------------------------------------------------------------------------------------------------


def process_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> slice:
    """The rows (first axis) of a global array of `shape` that this process's devices hold under `sharding`."""
    spans = sorted({(i[0].start or 0, shape[0] if i[0].stop is None else i[0].stop)
                    for i in sharding.addressable_devices_indices_map(shape).values()})
    if any(b[0] != a[1] for a, b in zip(spans, spans[1:])):
        raise ValueError(
            f"This process's devices hold rows that are not contiguous. Received: rows {spans} of {shape[0]}. "
            "Order the mesh's devices by process (make_mesh does)."
        )
    start, stop = spans[0][0], spans[-1][1]
    return slice(start, stop)


def global_batch(mesh: Mesh, batch: np.ndarray) -> jax.Array:
    """The global (B, ...) `batch` (the same on every process) as one array split over the mesh's data axis
    (replicated over "model"): each process passes only its own rows (`jax.make_array_from_process_local_data`)."""
    batch = np.asarray(batch)
    n = _axis_size(mesh, DATA_AXIS)
    if batch.ndim == 0 or batch.shape[0] % n:
        raise ValueError(
            f"The batch size must be a multiple of the data axis ({n} devices). Received: batch.shape="
            f"{tuple(batch.shape)}. Use a batch of {n}k rows."
        )
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    rows = process_rows(sharding, batch.shape)
    return jax.make_array_from_process_local_data(sharding, batch[rows], batch.shape)


# -- back to the host --------------------------------------------------------------------------------------------


def to_host(tree: Any) -> Any:
    """Every jax.Array of `tree` as a full NumPy array on every process: local or replicated ones directly, ones
    split across processes after one compiled all-gather of them all (collective: call it on every process, with
    the same tree). `multihost_utils.process_allgather` does the same one array (one program) at a time."""
    leaves, treedef = jax.tree.flatten(tree)
    split = [i for i, x in enumerate(leaves)
             if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated)]
    if split:
        whole = [NamedSharding(leaves[i].sharding.mesh, PartitionSpec()) for i in split]
        gathered = jax.jit(lambda *xs: xs, out_shardings=tuple(whole))(*(leaves[i] for i in split))
        for i, x in zip(split, gathered):
            leaves[i] = x
    return jax.tree.unflatten(treedef, [np.asarray(x) if isinstance(x, jax.Array) else x for x in leaves])


def host_model(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose parameters are NumPy arrays gathered from every device (`to_host`): what
    `save_pretrained` or `canonical_state_dict` read when the parameters are split across processes."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, to_host(params), rest)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """{device: bytes of `tree`'s arrays stored on it} over this process's devices (`addressable_shards`)."""
    out: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        if isinstance(x, jax.Array):
            for shard in x.addressable_shards:
                out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out
