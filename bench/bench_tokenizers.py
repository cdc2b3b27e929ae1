"""Tokenizer throughput: tiktoken, transformers' GPT2TokenizerFast, ours fast, ours pure Python.

Workloads (all from the Shakespeare corpus in ../shared/corpus/shakespeare, or a path given):
    - one call: the whole corpus as one string;
    - batch docs: the corpus cut at line ends into texts of about 4 KB, one batched call;
    - batch lines: every line of the corpus as its own text, one batched call;
    - no spaces: the corpus's letters only, repeated to 10 MB: one 10 MB pre-token (the pathological case).
Contenders run in interleaved rounds (A B C D, A B C D, ...) in this one process; the table shows the median time
per workload, MB/s (UTF-8 bytes) and the ratio to tiktoken (> 1 is faster). Every contender's ids are checked
against tiktoken's on each workload. Peak RSS of one run of the no-space workload is measured in a forked child.

    python bench/bench_tokenizers.py [--rounds 3] [--nospace-mb 10] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import statistics
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
    return {
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


def _child_peak(fn, arg, queue) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(arg)
    queue.put((before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def peak_rss_mb(fn: Callable, arg: object) -> float:
    """Peak RSS (MB, Linux KiB units) of a forked child running fn(arg), above what the child started with."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child_peak, args=(fn, arg, queue))
    process.start()
    before, after = queue.get()
    process.join()
    return max(after - before, 0) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nospace-mb", type=float, default=10.0)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    contenders = build_contenders()
    loads = workloads(args.corpus, args.nospace_mb)
    times: dict[tuple[str, str], list[float]] = {(w, c): [] for w in loads for c in contenders}
    reference: dict[str, object] = {}
    for round_index in range(args.rounds):
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
    peaks = {name: peak_rss_mb(calls["one"], loads[nospace_name][1]) for name, calls in contenders.items()}

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
            results.append({"workload": workload, "contender": name, "median_s": median, "MB_per_s": nbytes / 1e6 / median})
            print(f"| {workload} | {name} | {median:.3f} | {nbytes / 1e6 / median:.2f} | {base / median:.2f}x |")
    print()
    print(f"| peak RSS, {nospace_name} | " + " | ".join(f"{n}: {peaks[n]:.0f} MB" for n in contenders) + " |")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "peak_rss_mb": peaks}, indent=1))


if __name__ == "__main__":
    main()
