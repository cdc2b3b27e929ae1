"""torch's CPU float32 matmul at the row counts of decoding: `F.linear` (MKL) against oneDNN (`gpt2_torch.linear`).

The projections of the GPT-2 124M shape (12 x c_attn, attn c_proj, c_fc, mlp c_proj, and the tied 50257-row LM
head), each called once per pass like one decode step. Passes alternate between the two kernels (A B A B), the
median is reported with the weight bytes per second it implies, and the ratio aten / oneDNN (above 1: oneDNN faster).

    python bench/bench_torch_linear.py                       # rows 1 2 4 8 16 32 64 256
    python bench/bench_torch_linear.py --rows 1,8 --passes 9 --threads 1
    python bench/bench_torch_linear.py --rows 1,8 --packed   # oneDNN: plain against prepacked weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from gpt2_torch import linear as L

SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12 + [(50257, 768)]  # (out, in)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,2,4,8,16,32,64,256")
    parser.add_argument("--passes", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--packed", action="store_true",
                        help="instead: oneDNN on plain weights against oneDNN on prepacked (blocked) weights")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o, i, generator=g) for o, i in SHAPES]
    biases = [torch.randn(o, generator=g) if o != 50257 else None for o, _ in SHAPES]
    nbytes = sum(w.numel() * 4 for w in weights)
    onednn = lambda x, w, b: torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")  # noqa: E731
    report = {"threads": torch.get_num_threads(), "weight_bytes": nbytes, "packed": args.packed, "rows": {}}
    with torch.inference_mode():
        for rows in [int(r) for r in args.rows.split(",")]:
            if args.packed:  # "aten" stands for oneDNN on the plain weights, "onednn" for the packed ones
                packed = {id(w): torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in weights}
                kernels = {"aten": onednn, "onednn": lambda x, w, b: onednn(x, packed[id(w)], b)}
            else:
                kernels = {"aten": F.linear, "onednn": onednn}
            inputs = {768: torch.randn(rows, 768, generator=g), 3072: torch.randn(rows, 3072, generator=g)}
            times: dict[str, list[float]] = {k: [] for k in kernels}
            for p in range(args.passes + 1):  # the first pass of each kernel is a warm-up
                for name, fn in kernels.items():
                    start = time.perf_counter()
                    for w, b in zip(weights, biases):
                        fn(inputs[w.shape[1]], w, b)
                    if p:
                        times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            report["rows"][rows] = {
                **{f"{k}_ms": round(v * 1e3, 2) for k, v in med.items()},
                **{f"{k}_GBps": round(nbytes / v / 1e9, 1) for k, v in med.items()},
                "aten_over_onednn": round(med["aten"] / med["onednn"], 2),
            }
            r = report["rows"][rows]
            a, b = ("oneDNN plain", "oneDNN packed") if args.packed else ("aten", "oneDNN")
            print(f"rows {rows:4d}: {a} {r['aten_ms']:8.2f} ms ({r['aten_GBps']:5.1f} GB/s)  "
                  f"{b} {r['onednn_ms']:8.2f} ms ({r['onednn_GBps']:5.1f} GB/s)  ratio {r['aten_over_onednn']:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
