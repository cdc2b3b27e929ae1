"""gpt2_flax against keras-hub's GPT2CausalLM on the JAX backend (both XLA): `bench/run.py` with those two
contenders (same shapes, rounds and table; see its docstring), JSON in bench/results/flax.json, no page written.

    python bench/bench_flax.py                       # table + bench/results/flax.json
    python bench/bench_flax.py --repeats 5 --new 128 # any bench/run.py option

Needs `pip install --no-deps keras-hub` for the peer (see docs/performance.md); without it the row says
"not installed".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

if __name__ == "__main__":
    run.main(["--contenders", "gpt2_flax,keras_hub_jax", "--baseline", "keras_hub_jax", *sys.argv[1:]],
             default_output=run.HERE / "results" / "flax.json", write_page=False)
