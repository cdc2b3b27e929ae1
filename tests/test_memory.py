"""gpt2_core.memory against the torch backend's parameters (models built on the meta device: shapes only, no memory):
parameter counts, the per-device shards of parameters, gradients and AdamW state, the gathered unit, the table."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

from gpt2_core.config import PRESETS, GPT2Config
from gpt2_core.memory import memory_table, num_parameters, training_memory
from gpt2_torch import GPT2LMHeadModel


def meta_model(config: GPT2Config) -> GPT2LMHeadModel:
    with torch.device("meta"):
        return GPT2LMHeadModel(config)


CONFIGS = {name: GPT2Config.from_preset(name) for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
CONFIGS["untied-tiny"] = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, tie_word_embeddings=False)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    config = CONFIGS[request.param]
    return config, meta_model(config)


def test_num_parameters_equals_torch(case):
    config, model = case
    assert num_parameters(config) == model.num_parameters()


@pytest.mark.parametrize("n_shards, dtype_bytes", [(1, 4), (2, 4), (8, 4), (3, 2)])
def test_per_device_bytes_follow_torch_parameters(case, n_shards, dtype_bytes):
    config, model = case
    params = [p for _, p in model.named_parameters()]  # the tied head is one parameter, listed once
    shard = sum(math.ceil(p.numel() / n_shards) for p in params) * dtype_bytes
    mem = training_memory(config, n_shards, dtype_bytes)
    assert (mem.n_params, mem.params, mem.grads, mem.optimizer) == (model.num_parameters(), shard, shard, 2 * shard)
    # the unit gathered whole: the embeddings together, or one block (torch's module tree gives the grouping)
    units = defaultdict(int)
    for name, p in model.named_parameters():
        parts = name.split(".")
        key = "emb" if parts[1] in ("wte", "wpe") else ".".join(parts[:3]) if parts[1] == "h" else parts[0] + parts[1]
        units[key] += p.numel()
    gathered = 0 if n_shards == 1 else 2 * max(units.values()) * dtype_bytes
    assert mem.gathered == gathered and mem.total == 4 * shard + gathered


def test_data_parallel_is_16_bytes_per_parameter():
    mem = training_memory(CONFIGS["gpt2-xl"])
    assert mem.total == 16 * mem.n_params and 23 < mem.total / 2**30 < 24  # the "~25 GB" for xl in fp32


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_shards must be an integer >= 1. Received: n_shards=0"):
        training_memory(CONFIGS["gpt2"], 0)
    with pytest.raises(ValueError, match="dtype_bytes"):
        training_memory(CONFIGS["gpt2"], 2, 2.5)


def test_table_rows():
    table = memory_table(shards=(1, 4)).splitlines()
    assert len(table) == 2 + 4 and "sharded / 4" in table[0]
    row = dict(zip([c.strip() for c in table[0].split("|")[1:-1]], [c.strip() for c in table[2].split("|")[1:-1]]))
    n = meta_model(CONFIGS["gpt2"]).num_parameters()
    assert row["model"] == "gpt2" and row["data parallel"] == f"{16 * n / 2**30:.2f}"
    assert set(PRESETS) >= {r.split("|")[1].strip() for r in table[2:]}


def test_docs_table_is_the_computed_one():
    from conftest import REPO

    assert memory_table() in (REPO / "docs" / "scaling.md").read_text(encoding="utf-8")
