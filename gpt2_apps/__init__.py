"""The application layer: the `gpt2` / `gpt2-convert` / `gpt2-verify` commands and the one backend registry they and
the tests use. The only layer that imports every backend; no library module imports it.

    gpt2_core  <-  weights_convert  <-  gpt2_torch, gpt2_tf, gpt2_flax  <-  gpt2_apps

* `gpt2_apps.backends`: one adapter per framework (`get_backend(name)`: build/load, NumPy in and out, forward,
  generate, precision flags, `available()`), imported lazily so one installed framework is enough.
* `gpt2_apps.cli`: `gpt2 generate | convert | verify | train` and `gpt2-convert` (with `--verify`).
* `gpt2_apps.train_cli`: `gpt2 train`.
* `gpt2_apps.verify`: `gpt2-verify`, one checkpoint through the NumPy reference and every backend.
"""
