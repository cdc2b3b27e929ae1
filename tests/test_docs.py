"""Every code block of README.md and docs/*.md runs as written (issue 11 item 7), so the docs cannot rot.

Per page, in page order, from a temporary working directory:
    - ```python blocks are executed in one namespace (a page's first block sets up what the later ones use);
    - ```bash / ```sh / ```console blocks are split into commands (`\\` continuations joined, comments dropped)
      and each command is run in-process: `gpt2`, `gpt2-convert`, `gpt2-verify` through their `main(argv)`,
      `python -m MODULE` through runpy, `curl` as a subprocess (against the local server below). Bash itself
      turns the line into argv (`printf '%s\\0'`), so quoting such as `$'\\n\\n'` means what it means in a shell.
      A command that is not run must match a rule of NOT_RUN, which gives the reason; any other command fails
      the test (no silent skips);
    - ```json blocks must parse; blocks without a language are output or diagrams, not code (NOT_CODE says why).

What the blocks need from outside is made by the `docs_env` fixture: a fake Hugging Face cache (HF_HUB_CACHE in
the temporary directory, HF_HUB_OFFLINE=1) that holds the shipped model gpt2_core/data/default-model under the Hub
ids the docs name, the files and directories the commands name (`my_texts/`, `path/to/gpt2`, `./my-tf-model`,
OpenAI's `models/124M`, ...), `../shared/corpus/shakespeare` (the committed sample), and for docs/serving.md a
server on a free port (`gpt2_apps.serve.ServerThread`). Slow arguments are replaced by the written-down
SUBSTITUTIONS (each one must still match its page, so a stale entry fails).

docs/tokenizer.md also has its own test that checks what its blocks print
(test_tokenization.test_docs_examples_run_and_print_what_they_say).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_CORPUS
from fixtures.hub_cache import cache_directory

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
DEFAULT_MODEL = REPO / "gpt2_core" / "data" / "default-model"

# Every page with code: README.md and docs/*.md (a new page is picked up by itself).
PAGES = ("README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md")))

SHELL_LANGS = ("bash", "sh", "console", "shell")

# Hub ids the pages load; each is the shipped default model in the fake cache.
HUB_IDS = ("gpt2", "openai-community/gpt2")

# Commands that are not run, by rule: (regex on the command, reason).
NOT_RUN = (
    (r"^pip install\b", "installs packages"),
    (r"^python3 -m venv\b", "creates a virtual environment and installs into it"),
    (r"^\. \.venv/bin/activate && python -m pytest\b", "runs the whole test suite, of which this test is part"),
    (
        r"^gpt2 serve\b",
        "starts a server that runs until it is stopped; the page's client blocks run against the same server started "
        "in-process (gpt2_apps.serve.ServerThread), and tests/test_serve.py runs `python -m gpt2_apps.serve`",
    ),
    (
        r"^python bench/bench_convert\.py",
        "a benchmark: converts a 1.5B-parameter model for minutes (tests/test_bench.py runs the bench runner)",
    ),
)

# Blocks without a language: what they are.
NOT_CODE = "output or a diagram, not code (a block without a language tag)"

# Written-down replacements of slow arguments and of what only exists at run time, per page: (old, new).
# `{server}` in `new` is the URL of the page's server.
SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "README.md": (
        # a 124M model from scratch for 1000 steps -> a tiny one for 2
        (
            "--model gpt2 -o run/",
            "--model gpt2 --set n_layer=1 --set n_embd=32 --set n_head=2 --block-size 32 --batch-size 2 "
            "--max-steps 2 -o run/",
        ),
    ),
    "docs/training.md": (
        ("--max-steps 1000", "--max-steps 2"),
        ("--batch-size 16", "--batch-size 2"),
        ("--max-steps 500", "--max-steps 2 --batch-size 2 --block-size 32"),
        # "..." stands for the arguments of the run being resumed: the fine-tune above, 2 steps further
        (
            "gpt2 train ... -o runs/ft --resume",
            "gpt2 train --backend torch --data my_texts/ --model path/to/gpt2 --learning-rate 1e-4 --max-steps 4 "
            "--batch-size 2 --block-size 32 -o runs/ft --resume",
        ),
    ),
    "docs/serving.md": (("http://127.0.0.1:8000", "{server}"),),
}

# Arguments put in front of a command's own (so an argument the page gives still wins, argparse keeping the last):
# shorter runs than the defaults, which the commands' own tests cover (tests/test_generate_cli.py, test_train_*.py).
ARGUMENT_DEFAULTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("gpt2", "generate"): ("--max-new-tokens", "12"),  # the shipped generation_config.json says 60
    ("gpt2", "train"): ("--eval-batches", "2"),  # the default evaluates 20 batches at the end
    ("gpt2", "verify"): ("--max-new-tokens", "2"),  # greedy agreement over 2 tokens, not 8
}

# Pages whose blocks talk to a server: the docs_env fixture starts one for them.
SERVED_PAGES = ("docs/serving.md",)


# ------------------------------------------------------------------------------------------------------- blocks


def code_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, code, line number of the opening fence) of each fenced block, in page order."""
    return [
        (m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```([\w+-]*)[^\n]*\n(.*?)^```", text, flags=re.M | re.S)
    ]


def python_blocks(text: str) -> list[str]:
    return [code for lang, code, _ in code_blocks(text) if lang == "python"]


def shell_commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment-only lines dropped."""
    commands, current = [], ""
    for line in code.splitlines():
        if current:
            line = line.lstrip()
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1].rstrip() + " "
            continue
        current += line
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def not_run_reason(command: str) -> str | None:
    for pattern, reason in NOT_RUN:
        if re.search(pattern, command):
            return reason
    return None


def substituted(page: str, text: str, server_url: str | None) -> str:
    for old, new in SUBSTITUTIONS.get(page, ()):
        assert old in text, f"{page}: the substitution {old!r} no longer matches the page; update SUBSTITUTIONS"
        text = text.replace(old, new.replace("{server}", server_url or "{server}"))
    return text


def argv_of(command: str) -> list[str]:
    """The argv bash makes of `command` (quotes, $'..', comments), without running it."""
    out = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    return out.split("\0")[:-1]


@contextlib.contextmanager
def _argv(argv: list[str]):
    saved = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = saved


def _exit_code(call) -> int:
    try:
        code = call()
    except SystemExit as e:
        code = e.code
    return 0 if code is None else code if isinstance(code, int) else 1


def run_command(command: str, where: str) -> None:
    """Run one documented command in-process (or curl as a subprocess); it must exit 0."""
    argv = argv_of(command)
    program, args = argv[0], argv[1:]
    if args and (program, args[0]) in ARGUMENT_DEFAULTS:
        args = [args[0], *ARGUMENT_DEFAULTS[program, args[0]], *args[1:]]
    if program == "gpt2":
        from gpt2_apps.cli import main

        code = _exit_code(lambda: main(args))
    elif program == "gpt2-convert":
        from gpt2_apps.cli import convert_main

        code = _exit_code(lambda: convert_main(args))
    elif program == "gpt2-verify":
        from gpt2_apps.verify import main

        code = _exit_code(lambda: main(args))
    elif program in ("python", "python3") and args[:1] == ["-m"]:
        with _argv([args[1], *args[2:]]):
            code = _exit_code(lambda: runpy.run_module(args[1], run_name="__main__", alter_sys=True))
    elif program == "curl":
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        code = result.returncode
        assert result.stdout.strip(), f"{where}: {command!r} answered nothing"
    else:
        pytest.fail(f"{where}: no rule runs or skips {command!r}: add one to NOT_RUN (with its reason) or to run_command")
    assert code == 0, f"{where}: {command!r} exited {code}"


# ------------------------------------------------------------------------------------------------------- fixtures


_LOADED: dict = {}


def _load_once(load):
    """`Backend.load` that loads the same files once per test session: the commands of all pages open the shipped
    model (or a copy) again and again, and a second load of the same files gives the same model; sharing it also
    shares TF's and JAX's compiled generate. Keyed by backend, head, resolved path (or Hub id) and arguments."""

    def cached(self, head, name_or_path, **kwargs):
        where = os.path.realpath(name_or_path) if os.path.exists(name_or_path) else str(name_or_path)
        if os.path.isdir(where):
            where = tuple(sorted((p.name, p.stat().st_size) for p in Path(where).iterdir()))
            if (Path(name_or_path) / "model.safetensors").exists():
                where += (Path(name_or_path, "model.safetensors").read_bytes()[-4096:],)
        key = (self.name, head, where, repr(sorted(kwargs.items())))
        if key not in _LOADED:
            _LOADED[key] = load(self, head, name_or_path, **kwargs)
        return _LOADED[key]

    return cached


@pytest.fixture
def docs_env(tmp_path, monkeypatch):
    """A working directory holding what the documented commands name, and a fake Hub cache (offline)."""
    import huggingface_hub.constants as hub_constants

    from gpt2_apps.backends import Backend

    monkeypatch.setattr(Backend, "load", _load_once(Backend.load))

    cache = tmp_path / "hub"
    for hub_id in HUB_IDS:
        cache_directory(cache, hub_id, DEFAULT_MODEL)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))  # read once, at import
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    work = tmp_path / "repo"
    work.mkdir()
    # ../shared/corpus/shakespeare, as beside the repository (the committed sample of it)
    (tmp_path / "shared" / "corpus").mkdir(parents=True)
    (tmp_path / "shared" / "corpus" / "shakespeare").symlink_to(SAMPLE_CORPUS)
    (work / "my_texts").symlink_to(SAMPLE_CORPUS)
    for placeholder in ("path/to/gpt2", "path/or/hub-id", "big-model"):
        shutil.copytree(DEFAULT_MODEL, work / placeholder)
    monkeypatch.chdir(work)
    monkeypatch.setattr(sys, "path", [str(work), *sys.path])
    return work


def _make_checkpoints(work: Path) -> None:
    """The checkpoints docs/convert.md and the README convert: the default model in TF, OpenAI and PyTorch form."""
    from weights_convert import convert

    convert(DEFAULT_MODEL, work / "my-tf-model", to="tf")
    convert(DEFAULT_MODEL, work / "old-model", to="pytorch")
    convert(DEFAULT_MODEL, work / "models" / "124M", to="openai")
    # the README's `gpt2 convert tf_model.h5`: the file, its config.json beside it
    for name in ("tf_model.h5", "config.json"):
        shutil.copy(work / "my-tf-model" / name, work / name)


@contextlib.contextmanager
def _server():
    from gpt2_apps.serve import ServerThread, build_app

    with ServerThread(build_app("torch")) as server:
        yield server.url


@contextlib.contextmanager
def _timed(where: str, what: str):
    """Log the wall and CPU seconds of a block or command (shown with `pytest -rA` or on a failure): under a loaded
    machine the CPU time is the figure to compare with the budget."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        sys.__stderr__.write(
            f"docs-timing {where}: {time.perf_counter() - wall:6.1f}s wall {time.process_time() - cpu:6.1f}s cpu  "
            f"{what[:100]}\n"
        )


# ------------------------------------------------------------------------------------------------------- the test


def test_pages_cover_every_page_with_code():
    assert "README.md" in PAGES and "docs/generation.md" in PAGES
    for page in PAGES:
        assert (REPO / page).is_file(), page


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page, docs_env):
    text = (REPO / page).read_text(encoding="utf-8")
    blocks = code_blocks(text)
    if not blocks:
        return  # a page without fenced blocks
    if any(lang in SHELL_LANGS and ("gpt2 convert" in code or "gpt2-convert" in code) for lang, code, _ in blocks):
        _make_checkpoints(docs_env)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(_server()) if page in SERVED_PAGES else None
        blocks = code_blocks(substituted(page, text, url))
        namespace: dict = {"__name__": f"docs_{Path(page).stem}"}
        for lang, code, line in blocks:
            where = f"{page}:{line}"
            if lang == "python":
                with _timed(where, "python block"):
                    exec(compile(code, f"{page} (```python block at line {line})", "exec"), namespace)
            elif lang in SHELL_LANGS:
                for command in shell_commands(code):
                    if not_run_reason(command) is None:
                        with _timed(where, command):
                            run_command(command, where)
            elif lang == "json":
                json.loads(code)
            elif lang == "":
                pass  # NOT_CODE
            else:
                pytest.fail(f"{where}: a ```{lang} block, and no rule says how to run it")


def test_not_run_commands_are_listed():
    """Every command that is not run, with its reason (printed with -s; the rules must each still match one)."""
    used = set()
    for page in PAGES:
        for lang, code, line in code_blocks((REPO / page).read_text(encoding="utf-8")):
            if lang in SHELL_LANGS:
                for command in shell_commands(code):
                    reason = not_run_reason(command)
                    if reason is not None:
                        used.add(reason)
                        print(f"not run: {page}:{line}: {command}  ({reason})")
    unused = [pattern for pattern, reason in NOT_RUN if reason not in used]
    assert not unused, f"NOT_RUN rules that match no documented command (remove them): {unused}"


def test_rules_catch_what_they_should():
    assert shell_commands("a \\\n  b  # c\n# only a comment\n\nd") == ["a b  # c", "d"]
    assert argv_of("gpt2 generate --stop $'\\n\\n' \"ROMEO:\"  # note") == ["gpt2", "generate", "--stop", "\n\n", "ROMEO:"]
    assert not_run_reason("pip install -e .") and not_run_reason("gpt2 generate x") is None
    with pytest.raises(pytest.fail.Exception, match="no rule"):
        run_command("rm -rf /nonexistent-dir-of-the-docs-test", "here")
