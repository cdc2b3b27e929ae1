"""PyTorch's engines for more than one device: FSDP2 parameter sharding for training (`shard_model`, the full
checkpoint gather, gradient clipping over sharded gradients) and big-model placement for inference (a
`device_map` of module prefixes -> devices, dispatched with accelerate's hooks).

Training: `fully_shard` (torch.distributed.fsdp, FSDP2) on each `GPT2Block`, then on the whole model, so each block
is gathered just before its forward and backward and freed after; the embeddings, the final LayerNorm and the LM
head (tied to the token embedding: one parameter, so one shard) form the root's group. Parameters become DTensors
sharded on dim 0 over the process group's mesh; the optimizer built on them keeps sharded state.

Inference: `plan_device_map` splits the blocks evenly over a device list (the embeddings and the tied LM head on
the first device, the final LayerNorm on the last), as transformers' `device_map="balanced"` does with
accelerate's `infer_auto_device_map`; `dispatch` moves every module to its device and adds accelerate's
`AlignDevicesHook`s, which move each module's inputs to its device (activations cross devices between blocks).

References: torch `distributed/fsdp/_fully_shard` and `distributed/checkpoint/state_dict.py`; torchtitan's
`clip_grad_norm_` (the global norm of DTensor gradients); accelerate `big_modeling.dispatch_model`, transformers
`modeling_utils._get_device_map`.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

# What `device_map=` strings mean (transformers' names): "auto" and "balanced" split the blocks evenly over the
# accelerators, "balanced_low_0" keeps fewer on the first (it holds the generation's work), "sequential" fills
# the first device before the next. Without accelerators every one means the CPU.
PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")


# ------------------------------------------------------------------------------------------------------------------
# Training: FSDP2
# ------------------------------------------------------------------------------------------------------------------


def shard_model(model: nn.Module, mesh: Any = None) -> nn.Module:
    """Shard `model` (a gpt2_torch model, already on its device) in place with FSDP2 `fully_shard`: each block,
    then the root. Returns the model (its class becomes `FSDP<Name>`, its parameters DTensors).

    Args:
        model: A GPT2LMHeadModel (or another head class); every rank must hold the same values (same seed or
            the same checkpoint): each rank keeps its slice.
        mesh: A 1-D `DeviceMesh`; None: one over the default process group on the model's device type.

    Raises:
        ValueError: The tied LM head and token embedding came apart (they must stay one parameter).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if mesh is None:
        mesh = init_device_mesh(next(model.parameters()).device.type, (torch.distributed.get_world_size(),))
    body = model.transformer if hasattr(model, "transformer") else model
    for block in body.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    tied = getattr(model, "lm_head", None) is not None and model.config.tie_word_embeddings
    if tied and model.lm_head.weight is not body.wte.weight:
        raise ValueError(
            "FSDP split the tied LM head from the token embedding. Received: lm_head.weight is not "
            "transformer.wte.weight after fully_shard. Report this; train without --shard-params meanwhile."
        )
    return model


def local_parameter_bytes(model: nn.Module) -> int:
    """Bytes of parameters this rank holds: the local shard of each DTensor, the whole of a plain tensor."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in model.parameters():
        t = p.to_local() if isinstance(p, DTensor) else p
        total += t.numel() * t.element_size()
    return total


def local_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of optimizer state (Adam's moments) this rank holds."""
    from torch.distributed.tensor import DTensor

    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                t = v.to_local() if isinstance(v, DTensor) else v
                total += t.numel() * t.element_size()
    return total


def clip_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip gradients to a global norm of `max_norm`; returns the norm before clipping (a plain tensor).

    With DTensor (sharded) gradients each rank's norm is partial: `full_tensor()` reduces it to the norm of the
    whole gradient, the one an unsharded run computes, before the clip coefficient is applied (torchtitan's rule).
    """
    from torch.distributed.tensor import DTensor

    parameters = [p for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm([p.grad for p in parameters])
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def full_state_dicts(
    model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(model state dict, optimizer state dict), whole, on rank 0's CPU; the other ranks get an empty model dict.

    Collective under FSDP: every rank calls it. The model's keys and layouts are its `state_dict()`'s
    (transformers' layout), gathered by torch.distributed.checkpoint's `get_model_state_dict(full_state_dict=True,
    cpu_offload=True)`; the optimizer's come from `optimizer_state_dict`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    optim_state = optimizer_state_dict(model, optimizer) if optimizer is not None else None
    return state, optim_state


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state on the CPU, keyed by parameter name (the layout of torch.distributed.checkpoint's
    `get_optimizer_state_dict(full_state_dict=True)`), so one file restores a run on any number of processes,
    sharded or not. Collective under FSDP (each DTensor state is gathered with `full_tensor()`, in parameter order).

    Written here rather than with `get_optimizer_state_dict`: with FSDP2 on gloo (torch 2.13) the next forward
    after that call hangs in its all-gather; this gather is the same data in the same layout.
    """
    from torch.distributed.tensor import DTensor

    names = {id(p): n for n, p in model.named_parameters()}
    state: dict[str, dict[str, Any]] = {}
    groups = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            entry = {}
            for key, value in sorted(optimizer.state.get(p, {}).items()):
                if isinstance(value, DTensor):
                    value = value.full_tensor()
                entry[key] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
            if entry:
                state[names[id(p)]] = entry
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append({**settings, "params": [names[id(p)] for p in group["params"]]})
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Restore a whole optimizer state (`optimizer_state_dict`'s layout, or torch.optim's numbered one of earlier
    checkpoints) into `optimizer`; under FSDP each rank keeps its slice (sliced like its parameter).

    Raises:
        ValueError: The state's parameter groups name other parameters than the optimizer's.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    groups = state.get("param_groups") or [{}]
    if all(isinstance(i, int) for g in groups for i in g.get("params", [])):
        optimizer.load_state_dict(state)  # torch.optim's own layout
        return
    names = {id(p): n for n, p in model.named_parameters()}
    mine = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
    theirs = [list(g.get("params", [])) for g in groups]
    if mine != theirs:
        raise ValueError(
            f"The optimizer state is of other parameters. Received: groups of {[len(g) for g in theirs]} parameters "
            f"({theirs[0][:2]}...), expected {[len(g) for g in mine]} ({mine[0][:2]}...). Resume with the model it "
            "was saved with."
        )
    params = {names[id(p)]: p for g in optimizer.param_groups for p in g["params"]}
    index = {n: i for i, n in enumerate(n for g in mine for n in g)}
    indexed = {}
    for name, entry in state.get("state", {}).items():
        p = params[name]
        local = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and isinstance(p, DTensor) and value.shape == p.shape:
                value = distribute_tensor(value.to(p.device), p.device_mesh, p.placements)
            local[key] = value
        indexed[index[name]] = local
    numbered = [{**g, "params": [index[n] for n in g["params"]]} for g in groups]
    optimizer.load_state_dict({"state": indexed, "param_groups": numbered})


# ------------------------------------------------------------------------------------------------------------------
# Inference: device_map placement
# ------------------------------------------------------------------------------------------------------------------


def available_devices() -> list[str]:
    """The accelerators a `device_map` string spreads over (CUDA, then XPU, then MPS), else `["cpu"]`."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return [f"xpu:{i}" for i in range(torch.xpu.device_count())]
    if torch.backends.mps.is_available():
        return ["mps"]
    return ["cpu"]


def module_prefixes(model: nn.Module) -> list[str]:
    """The units a device map places, in forward order: embeddings, each block (never split: `_no_split_modules`),
    the final LayerNorm, then the heads."""
    if not hasattr(model, "transformer"):  # the bare GPT2Model
        return ["wte", "wpe"] + [f"h.{i}" for i in range(len(model.h))] + ["ln_f"]
    body = ["transformer.wte", "transformer.wpe"] + [f"transformer.h.{i}" for i in range(len(model.transformer.h))]
    return body + ["transformer.ln_f"] + [name for name, _ in model.named_children() if name != "transformer"]


def plan_device_map(model: nn.Module, devices: Sequence[str | int | torch.device] | None = None,
                    placement: str = "balanced") -> dict[str, str]:
    """{module prefix: device} placing `model` over `devices` (default: `available_devices()`).

    The blocks split into contiguous runs, evenly ("balanced", "auto"), with the first device taking fewer
    ("balanced_low_0": it also holds the generation's logits), or as many as fit per device in order
    ("sequential": all on the first device unless it lacks memory; here, with no memory limits given, all on the
    first). The embeddings and the head stay on the first device: the LM head is the token embedding when tied, and
    a tied parameter lives on one device. The final LayerNorm goes with the last block.

    Args:
        model: A gpt2_torch model.
        devices: Devices in order (`"cuda:0"`, `1`, `torch.device("cpu")`); repeats allowed (a plan over
            `["cpu", "cpu"]` is a valid plan on one device, used to test placement without accelerators).
        placement: One of `PLACEMENTS`.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown device_map placement. Received: device_map={placement!r}. Use one of {PLACEMENTS} "
                         "or a dict {module prefix: device}.")
    devices = [normalize_device(d) for d in (available_devices() if devices is None else devices)]
    if not devices:
        raise ValueError("No devices to place the model on. Received: devices=[]. Pass at least one device.")
    names = module_prefixes(model)
    blocks = [n for n in names if ".h." in "." + n]
    n_dev = len(devices)
    if placement == "sequential" or n_dev == 1:
        share = [len(blocks)] + [0] * (n_dev - 1)
    elif placement == "balanced_low_0":
        # the first device takes half a share, the rest split what is left evenly
        first = len(blocks) // (2 * n_dev - 1)
        rest = np.array_split(np.arange(len(blocks) - first), n_dev - 1)
        share = [first] + [len(r) for r in rest]
    else:
        share = [len(r) for r in np.array_split(np.arange(len(blocks)), n_dev)]
    plan: dict[str, str] = {}
    i = 0
    for device, count in zip(devices, share):
        for name in blocks[i : i + count]:
            plan[name] = device
        i += count
    last = plan[blocks[-1]] if blocks else devices[0]
    for name in names:
        if name not in plan:
            plan[name] = last if name.endswith("ln_f") else devices[0]
    return {name: plan[name] for name in names}


def normalize_device(device: str | int | torch.device) -> str:
    """`0` -> `cuda:0` (transformers' rule for integers), a torch.device or string -> its string."""
    if isinstance(device, bool):
        raise ValueError(f"A device must be a string, an integer or a torch.device. Received: device={device!r}.")
    if isinstance(device, int):
        return f"cuda:{device}"
    return str(torch.device(device))


def resolve_device_map(model: nn.Module, device_map: str | Mapping[str, Any]) -> dict[str, str]:
    """A `device_map=` value -> a complete {module prefix: device} plan for `model`.

    A dict may name any module prefix (`"transformer.h.0"`, `"transformer"`, `""` for all), with or without the
    `transformer.` prefix; each unit of `module_prefixes` takes the device of its longest matching prefix.

    Raises:
        ValueError: A unit no prefix covers, a prefix naming no module, an unavailable device, or CPU / disk
            offload (a mix of CPU and accelerators: not supported; place every module on an accelerator).
    """
    if isinstance(device_map, str):
        return plan_device_map(model, placement=device_map)
    names = module_prefixes(model)
    body = "transformer." if hasattr(model, "transformer") else ""

    def covers(prefix: str) -> bool:  # the prefix of at least one unit (or the unit itself)
        return prefix == "" or any(n == prefix or n.startswith(prefix + ".") for n in names)

    given: dict[str, str] = {}
    for key, device in device_map.items():
        full = key if covers(key) or not body else body + key  # "h.0" means "transformer.h.0", as the Hub names
        unit = next((n for n in names if key.startswith(n + ".") or full.startswith(n + ".")), None)
        if unit is not None:
            raise ValueError(
                f"device_map splits a unit that is placed whole (a block, an embedding, a head). Received: "
                f"device_map[{key!r}]={device!r}. Name {unit!r} or a prefix of it."
            )
        if not covers(full):
            raise ValueError(
                f"device_map names no module of the model. Received: device_map[{key!r}]={device!r}. Use prefixes "
                f"of {names[:3] + ['...'] + names[-2:]}."
            )
        if str(device) == "disk":
            raise ValueError(f"Disk offload is not supported. Received: device_map[{key!r}]='disk'. Place every "
                             "module on a device.")
        given[full] = normalize_device(device)
    plan = {}
    for name in names:
        match = [p for p in given if p == "" or name == p or name.startswith(p + ".")]
        if not match:
            raise ValueError(
                f"device_map gives no device for {name!r}. Received: device_map={dict(device_map)!r}. Name every "
                "module (or a prefix of it, '' for the rest), or pass device_map='balanced'."
            )
        plan[name] = given[max(match, key=len)]
    _check_devices(plan)
    tied = getattr(model, "lm_head", None) is not None and model.config.tie_word_embeddings
    if tied and plan.get("lm_head") != plan.get(body + "wte"):
        raise ValueError(
            f"The tied LM head must sit on the token embedding's device. Received: lm_head on {plan['lm_head']!r}, "
            f"{body}wte on {plan[body + 'wte']!r}. Put both on one device."
        )
    return plan


def _check_devices(plan: Mapping[str, str]) -> None:
    kinds = {torch.device(d).type for d in plan.values()}
    if "cpu" in kinds and len(kinds) > 1:
        raise ValueError(
            f"CPU offload is not supported. Received: a device_map mixing cpu with {sorted(kinds - {'cpu'})}. Place "
            "every module on an accelerator, or all on the CPU."
        )
    for device in set(plan.values()):
        d = torch.device(device)
        if d.type == "cuda" and (not torch.cuda.is_available() or (d.index or 0) >= torch.cuda.device_count()):
            raise ValueError(
                f"The device is not available. Received: device_map placing modules on {device!r}, "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0} CUDA device(s) here. Use devices "
                "of this machine, or device_map='balanced'."
            )


def dispatch(model: nn.Module, plan: Mapping[str, str]) -> nn.Module:
    """Move each module of `plan` to its device and add accelerate's hooks that move each module's inputs to its
    device (accelerate `dispatch_model`; hooks forced even when every module sits on one device, so that path can
    be tested on a CPU). Sets `model.hf_device_map` (transformers' attribute). Outputs come out on the device of
    the module that made them (the logits on the LM head's: the first device), as with transformers."""
    from accelerate import dispatch_model

    model = dispatch_model(model, device_map=dict(plan), main_device=next(iter(plan.values())), force_hooks=True)
    model.hf_device_map = dict(plan)
    return model


def place(model: nn.Module, device_map: str | Mapping[str, Any]) -> nn.Module:
    """`from_pretrained(..., device_map=...)`: the model placed as `device_map` says.

    `"cpu"`: stays on the CPU. A placement string: planned over `available_devices()`; a dict: resolved against
    the model (`resolve_device_map`). A plan on one device moves the model there whole (no hooks); a plan over
    several dispatches it (`dispatch`).
    """
    if device_map == "cpu":
        return model
    plan = plan_device_map(model, placement=device_map) if isinstance(device_map, str) else resolve_device_map(
        model, device_map)
    devices = set(plan.values())
    logger.info("device_map=%r: %s", device_map if isinstance(device_map, str) else "dict",
                ", ".join(f"{d}: {sum(v == d for v in plan.values())} modules" for d in sorted(devices)))
    if len(devices) == 1:
        model = model.to(devices.pop())
        model.hf_device_map = dict(plan)
        return model
    return dispatch(model, plan)
