"""The tf test adapter: `gpt2_apps.backends.get_backend("tf")` under its older module name (kept for
tests that `import backend_tf`; new tests use the `backend` fixture or `conftest.backend_adapter`)."""

from conftest import backend_adapter

NAME = "tf"
_adapter = backend_adapter(NAME)  # also sets full fp32 matmul precision
build, forward, canonical, generate = _adapter.build, _adapter.forward, _adapter.canonical, _adapter.generate
save, load = _adapter.save, _adapter.load
