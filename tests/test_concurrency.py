"""Concurrency: two threads generating on one model, and a reader loading a directory while it is being saved.

* generate: two threads on one model (every backend) give the tokens the NumPy reference's greedy decoding gives
  (gpt2_core.generation.reference_greedy) and the sequential calls give, even with the model in training mode
  (dropout on: a generate that used the module's mode, or flipped it, would differ), and leave the train/eval
  state as it was. docs/architecture.md ("Thread safety") says what is safe per backend.
* load_pretrained against save_pretrained: a reader never pairs one save's config.json with another save's
  weights (the writer publishes under an exclusive `gpt2_core.hub.directory_lock`, the reader reads under the
  shared one). Each save marks its config (`initializer_range`) and its weights (`wte[0, 0]`) with the same value;
  the reader is slowed between reading the config and the weights so that an unlocked reader would see a mix.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from conftest import make_config, padded_batch
from gpt2_core import hub, reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation import make_generation_config, reference_greedy
from weights_convert import pretrained

NEW = 6


def _mode(backend, model):
    """The model's train/eval state as comparable data: torch per module `training`, Flax per Dropout
    `deterministic`; Keras models have no mode (training is a call argument), so none for TF."""
    if backend.name == "torch":
        return tuple(m.training for m in model.modules())
    if backend.name == "flax":
        from flax import nnx

        return tuple(m.deterministic for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout))
    return ()


def _train_mode(backend, model) -> None:
    if backend.name in ("torch", "flax"):
        model.train()


def _in_threads(fn, args_list):
    results, errors = [None] * len(args_list), []
    start = threading.Barrier(len(args_list))

    def work(i, args):
        try:
            start.wait(timeout=60)
            results[i] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, a)) for i, a in enumerate(args_list)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a generating thread hung"
    return results


def test_two_threads_generating_on_one_model(backend):
    config = make_config("default", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    params = reference.random_params(config, "lm", seed=21)
    model = backend.build("lm", config, params)
    _train_mode(backend, model)  # dropout on in the module: generate must not use it, nor change it
    before = _mode(backend, model)
    ids, mask = padded_batch(config, "left", seed=3)
    prompts = [(ids[:2], mask[:2]), (ids[1:], mask[1:])]  # two different batches of the same shape
    gen = make_generation_config(config, ids.shape[1], max_new_tokens=NEW, do_sample=False)
    want = [reference_greedy(params, config, i, m, gen) for i, m in prompts]

    def generate(i, m):
        return np.asarray(backend.generate(model, i, attention_mask=m, max_new_tokens=NEW, do_sample=False))

    sequential = [generate(i, m) for i, m in prompts]
    for got, exp in zip(sequential, want):
        np.testing.assert_array_equal(got, exp)
    assert _mode(backend, model) == before
    for _ in range(2):
        concurrent = _in_threads(generate, prompts + prompts)
        for got, exp in zip(concurrent, want + want):
            np.testing.assert_array_equal(got, exp)
        assert _mode(backend, model) == before, "generate changed the model's train/eval state"


# ------------------------------------------------------------------------------------ save while loading

TINY = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)


def _save(directory, marker: float) -> None:
    config = GPT2Config(**TINY, initializer_range=marker)
    params = reference.random_params(config, "lm", seed=0)
    params["wte.weight"][0, 0] = marker
    pretrained.save_pretrained(directory, config, params, "lm")


def _race(tmp_path, monkeypatch, seconds: float = 3.0) -> tuple[int, list[tuple[float, float]]]:
    """Saves alternating two markers while a reader loads; returns (loads, the mismatched (config, weights))."""
    directory = tmp_path / "model"
    _save(directory, 0.25)
    real = hub.resolve_weights

    def slow_resolve(*args, **kwargs):  # the reader has read config.json: give a writer time to publish
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(hub, "resolve_weights", slow_resolve)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        i = 0
        try:
            while not stop.is_set():
                _save(directory, (0.5, 0.75)[i % 2])
                i += 1
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    loads, mixed = 0, []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline or loads < 20:
            got = pretrained.load_pretrained(directory, "lm", check_finite=False)
            loads += 1
            pair = (got.config.initializer_range, float(got.canonical["wte.weight"][0, 0]))
            if pair[0] != pair[1]:
                mixed.append(pair)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    return loads, mixed


def test_a_reader_never_pairs_one_save_config_with_another_save_weights(tmp_path, monkeypatch):
    loads, mixed = _race(tmp_path, monkeypatch)
    assert loads >= 20 and mixed == [], f"{len(mixed)} of {loads} loads mixed two saves: {mixed[:5]}"


def test_the_race_test_sees_a_mix_without_the_lock(tmp_path, monkeypatch):
    """The oracle can fail: with the directory lock made a no-op, the same race mixes two saves."""
    import contextlib

    monkeypatch.setattr(hub, "directory_lock", lambda directory, shared=False: contextlib.nullcontext())
    loads, mixed = _race(tmp_path, monkeypatch, seconds=2.0)
    assert mixed, f"no mixed load in {loads} loads: the race test would not catch a missing lock"


# ------------------------------------------------------------------------------------ ambiguous directories


@pytest.mark.parametrize("pair", [("tf_model.h5", "flax_model.msgpack"), ("pytorch_model.bin", "tf_model.h5")])
def test_two_weight_files_warn_naming_the_one_loaded(tmp_path, caplog, pair):
    """Beside test_strict_loading's safetensors + pytorch_model.bin: any two formats warn, naming the file used,
    which is the first of gpt2_core.hub.WEIGHT_FILES (transformers' order) and whose weights are the ones loaded."""
    from weights_convert import convert

    config = GPT2Config(**TINY)
    first, second = pair
    fmt = {"tf_model.h5": "tf", "flax_model.msgpack": "flax", "pytorch_model.bin": "pytorch"}
    for name, seed in ((first, 1), (second, 2)):
        params = reference.random_params(config, "lm", seed=seed)
        src = pretrained.save_pretrained(tmp_path / f"src{seed}", config, params, "lm")[0].parent
        out = convert(src, tmp_path / f"out{seed}", fmt[name])
        (tmp_path / "both").mkdir(exist_ok=True)
        (out / name).rename(tmp_path / "both" / name)
        if seed == 1:
            (out / "config.json").rename(tmp_path / "both" / "config.json")
    with caplog.at_level(logging.WARNING, logger="gpt2_core.hub"):
        got = pretrained.load_pretrained(tmp_path / "both", "lm")
    warning = next(r.getMessage() for r in caplog.records if "several weight files" in r.getMessage())
    assert f"Loading {first}" in warning and second in warning
    want = reference.random_params(config, "lm", seed=1)["wte.weight"]
    assert float(np.max(np.abs(got.canonical["wte.weight"] - want))) == 0.0
