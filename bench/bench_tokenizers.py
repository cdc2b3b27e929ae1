"""Tokenizer throughput: tiktoken, transformers' GPT2TokenizerFast, ours fast, ours pure Python.

Workloads (all from the Shakespeare corpus in ../shared/corpus/shakespeare, or a path given):
    - one call: the whole corpus as one string;
    - batch docs: the corpus cut at line ends into texts of about 4 KB, one batched call;
    - batch lines: every line of the corpus as its own text, one batched call;
    - no spaces: the corpus's letters only, repeated to 10 MB: one 10 MB pre-token (the pathological case).
Contenders run in interleaved rounds (A B C D, A B C D, ...) in this one process; the table shows the median time
per workload, MB/s (UTF-8 bytes) and the ratio to tiktoken (> 1 is faster). Every contender's ids are checked
against tiktoken's on each workload. Peak RSS (and time) of one run of the no-space workload is measured in a
fresh (spawned) process per contender.

    python bench/bench_tokenizers.py [--rounds 3] [--nospace-mb 10] [--corpus DIR] [--output results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import regex

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "corpus" / "shakespeare"


def build_contenders() -> dict[str, dict[str, Callable]]:
    import tiktoken
    import transformers

    from gpt2_core import tokenization_io as io
    from gpt2_core.tokenization import GPT2_PRETOKENIZE_PATTERN, GPT2Tokenizer, GPT2TokenizerFast, bytes_to_unicode

    encoder, _ = io.shipped_files()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_decoder[c] for c in t): i for t, i in encoder.items() if t != "<|endoftext|>"}
    # tiktoken.get_encoding("gpt2") would download the same files; build it from the shipped ones instead.
    tk = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                           special_tokens={"<|endoftext|>": 50256})  # fmt: skip
    directory = tempfile.mkdtemp(prefix="bench_tok_")
    GPT2Tokenizer().save_pretrained(directory)
    hf = transformers.GPT2TokenizerFast.from_pretrained(directory)
    ours_fast, ours_py = GPT2TokenizerFast(), GPT2Tokenizer()
    contenders = {
        "tiktoken": {
            "one": lambda s: tk.encode(s, allowed_special="all"),
            "batch": lambda b: tk.encode_batch(b, allowed_special="all"),
        },
        "transformers GPT2TokenizerFast": {
            "one": lambda s: hf(s)["input_ids"],
            "batch": lambda b: hf(b)["input_ids"],
        },
        "ours GPT2TokenizerFast": {
            "one": lambda s: ours_fast(s)["input_ids"],
            "batch": lambda b: ours_fast(b)["input_ids"],
        },
        "ours GPT2Tokenizer (pure Python)": {
            "one": lambda s: ours_py(s)["input_ids"],
            "batch": lambda b: ours_py(b)["input_ids"],
        },
    }
    for calls in contenders.values():  # untimed warm-up: lazily built engines and thread pools
        calls["one"]("Hello world.\n" * 100)
        calls["batch"](["Hello world.\n"] * 100)
    return contenders


def workloads(corpus: Path, nospace_mb: float) -> dict[str, tuple[str, object, int]]:
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(corpus.iterdir()) if p.is_file() and p.suffix == ".txt")
    lines = text.splitlines(keepends=True)
    docs, current = [], []
    size = 0
    for line in lines:
        current.append(line)
        size += len(line)
        if size >= 4096:
            docs.append("".join(current))
            current, size = [], 0
    if current:
        docs.append("".join(current))
    letters = regex.sub(r"\P{L}+", "", text)
    target = int(nospace_mb * 1e6)
    nospace = (letters * (target // len(letters.encode()) + 1)).encode()[:target].decode("utf-8", "ignore")
    nbytes = len(text.encode())
    return {
        "one call (corpus)": ("one", text, nbytes),
        f"batch docs ({len(docs)} x ~4 KB)": ("batch", docs, nbytes),
        f"batch lines ({len(lines)})": ("batch", lines, nbytes),
        f"no spaces ({nospace_mb:g} MB, one word)": ("one", nospace, len(nospace.encode())),
    }


def _child_peak(name: str, corpus: Path, nospace_mb: float, queue) -> None:
    calls = build_contenders()[name]
    loads = workloads(corpus, nospace_mb)
    text = next(data for workload, (_, data, _) in loads.items() if workload.startswith("no spaces"))
    # Building the workloads peaked above what the call may need: reset the high-water mark to the current RSS
    # (Linux: /proc/self/clear_refs), else the call's peak hides under it.
    def kib(key: str) -> int:
        lines = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in lines if line.startswith(key)).split()[1])

    def peak() -> int:
        return kib("VmHWM:") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
        before = kib("VmRSS:")
    except OSError:
        reset = False
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    calls["one"](text)
    seconds = time.perf_counter() - start
    queue.put((before, peak(), seconds))


def peak_rss_mb(name: str, corpus: Path, nospace_mb: float) -> tuple[float, float]:
    """(peak RSS in MB above what the process held before the call, seconds) of one no-space call of contender
    `name`, in a fresh interpreter (spawned, not forked: a fork would inherit the parent's freed heap, which the
    call could reuse unseen). ru_maxrss is in KiB on Linux."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child_peak, args=(name, corpus, nospace_mb, queue))
    process.start()
    before, after, seconds = queue.get()
    process.join()
    return max(after - before, 0) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nospace-mb", type=float, default=10.0)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--output", "--json", dest="json", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    contenders = build_contenders()
    loads = workloads(args.corpus, args.nospace_mb)
    times: dict[tuple[str, str], list[float]] = {(w, c): [] for w in loads for c in contenders}
    reference: dict[str, object] = {}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1} of {args.rounds}", file=sys.stderr, flush=True)
        for workload, (kind, data, _) in loads.items():
            for name, calls in contenders.items():  # interleaved: every contender once per round
                start = time.perf_counter()
                ids = calls[kind](data)
                times[(workload, name)].append(time.perf_counter() - start)
                if round_index == 0:
                    reference.setdefault(workload, ids)
                    if ids != reference[workload]:
                        raise SystemExit(f"{name} gives other ids than tiktoken on {workload!r}")
    nospace_name = next(w for w in loads if w.startswith("no spaces"))
    peaks = {name: peak_rss_mb(name, args.corpus, args.nospace_mb) for name in contenders}

    print(f"machine: {platform.processor() or platform.machine()}, {multiprocessing.cpu_count()} CPUs, "
          f"python {platform.python_version()}; {args.rounds} interleaved rounds, medians")  # fmt: skip
    print()
    print("| workload | contender | median s | MB/s | vs tiktoken |")
    print("|---|---|---|---|---|")
    results = []
    for workload, (_, _, nbytes) in loads.items():
        base = statistics.median(times[(workload, "tiktoken")])
        for name in contenders:
            median = statistics.median(times[(workload, name)])
            results.append({"workload": workload, "contender": name, "bytes": nbytes, "median_s": median,
                            "MB_per_s": nbytes / 1e6 / median, "vs_tiktoken": base / median,
                            "times_s": times[(workload, name)]})  # fmt: skip
            print(f"| {workload} | {name} | {median:.3f} | {nbytes / 1e6 / median:.2f} | {base / median:.2f}x |")
    print()
    print(f"One {nospace_name} call in a fresh process: peak RSS above the process before the call, and its time")
    print()
    print("| contender | peak RSS MB | s |")
    print("|---|---|---|")
    for name in contenders:
        print(f"| {name} | {peaks[name][0]:.0f} | {peaks[name][1]:.2f} |")
    if args.json:
        machine = {"processor": platform.processor() or platform.machine(), "cpus": multiprocessing.cpu_count(),
                   "python": platform.python_version()}  # fmt: skip
        nospace = {name: {"peak_rss_mb": peak, "seconds": seconds} for name, (peak, seconds) in peaks.items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine, "rounds": args.rounds, "results": results,
                                         "nospace": nospace}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
