"""gpt2_tf's batch-1 generate against transformers v5 (PyTorch) on the same checkpoint.

tests/test_generation_tf.py decodes 3 rows; at batch 1 XLA compiles the loop differently (every projection is a
matrix-vector product, the cache's unit batch axis is dropped: docs/performance.md, "TensorFlow: batch-1 decoding
profile"), so the caller's single row is held to transformers' tokens, scores and logits here: greedy with the
processors, through the chunked loop (a streamer: `resume` continues the returned state, whose first step is a
forward on the last token) and a seeded near-greedy sample. One prompt shape, so the XLA compiles stay few."""

from __future__ import annotations

import numpy as np

from test_generation_tf import N, OUTPUTS, PROCESSORS, Recorder, assert_same, batch, hf_generate, pair  # noqa: F401


def _row(batch, r):
    ids, mask = batch
    return ids[r : r + 1], mask[r : r + 1]


def test_batch1_greedy_matches_transformers(pair, batch):
    """A left-padded row and a full row, every processor that runs without sampling, scores and logits."""
    hf, ours, _ = pair
    for r in (0, len(batch[0]) - 1):
        ids, mask = _row(batch, r)
        kwargs = dict(max_new_tokens=N, **PROCESSORS, **OUTPUTS)
        out = ours.generate(ids, attention_mask=mask, **kwargs)
        assert out.sequences.shape == (1, ids.shape[1] + N) and out.scores[0].shape[0] == 1
        assert_same(hf_generate(hf, ids, mask, **kwargs), out)


def test_batch1_streamer_matches_transformers(pair, batch):
    """The chunked loop (begin, then resume from the returned state) streams the tokens as they come."""
    hf, ours, _ = pair
    ids, mask = _row(batch, 0)
    rec = Recorder()
    kwargs = dict(max_new_tokens=N, **PROCESSORS, **OUTPUTS)
    out = ours.generate(ids, attention_mask=mask, streamer=rec, **kwargs)
    assert rec.ended and all(p.shape == (1,) for p in rec.puts[1:])
    np.testing.assert_array_equal(np.concatenate([rec.puts[0]] + [p[:, None] for p in rec.puts[1:]], 1), out.sequences)
    assert_same(hf_generate(hf, ids, mask, **kwargs), out)


def test_batch1_sampling(pair, batch):
    """A seed reproduces a batch-1 draw, and a near-zero temperature gives transformers' greedy tokens."""
    hf, ours, _ = pair
    ids, mask = _row(batch, 1)
    kw = dict(attention_mask=mask, max_new_tokens=N, do_sample=True)
    a = np.asarray(ours.generate(ids, seed=3, **kw))
    np.testing.assert_array_equal(a, np.asarray(ours.generate(ids, seed=3, **kw)))
    cold = np.asarray(ours.generate(ids, seed=7, temperature=1e-4, **kw))
    np.testing.assert_array_equal(cold, hf_generate(hf, ids, mask, max_new_tokens=N).numpy())
