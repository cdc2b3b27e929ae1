"""gpt2_tf against keras-hub's GPT2CausalLM on the TensorFlow backend (both XLA-compiled): `bench/run.py` with
those two contenders (same shapes, rounds and table; see its docstring), JSON in bench/results/tf.json, no page
written.

    python bench/bench_tf.py                       # table + bench/results/tf.json
    python bench/bench_tf.py --repeats 5 --new 128 # any bench/run.py option

Needs `pip install --no-deps keras-hub` for the peer (see docs/performance.md); without it the row says
"not installed".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (bench/run.py)

if __name__ == "__main__":
    run.main(["--contenders", "gpt2_tf,keras_hub_tf", "--baseline", "keras_hub_tf", *sys.argv[1:]],
             default_output=run.HERE / "results" / "tf.json", write_page=False)
