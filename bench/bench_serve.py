"""Throughput of `gpt2 serve` under 1, 8 and 32 concurrent clients: requests/s and completion tokens/s.

The server runs as its own process (`python -m gpt2_apps.serve`, the shipped default model unless --model), so the
clients (threads with plain HTTP/1.1 connections, stdlib only) do not share its interpreter. Each client sends
`--requests` non-streamed completions one after another (`max_tokens=--tokens`, greedy, prompts varied); the wall
time of a level runs from the first request sent to the last answer. Before each level an unmeasured pass of one
request per client lets TF / Flax compile that batch shape.

    python bench/bench_serve.py                              # torch; table + bench/results/serve_torch.json
    python bench/bench_serve.py --backend flax --tokens 64
    python bench/bench_serve.py --compare-unbatched          # also 32 clients against --max-batch 1

"gain" is tokens/s at that level over tokens/s with one client (one request at a time).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LEVELS = (1, 8, 32)
PROMPTS = ("ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:", "NURSE:", "HAMLET:\nTo be", "O, ", "MACBETH:")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(backend: str, model: str | None, port: int, extra: list[str],
                 threads: int | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpt2_apps.serve", "--backend", backend, "--port", str(port),
           "--max-pending", "1024", *extra]
    if model:
        cmd += ["--model", model]
    env = dict(os.environ, HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if threads:  # intra-op threads of torch (OpenMP) and TF; a busy machine thrashes with more threads than cores
        env.update(OMP_NUM_THREADS=str(threads), TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not come up in 900 s")


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data


def run_level(port: int, model_id: str, clients: int, requests: int, tokens: int) -> dict:
    results: list[tuple[int, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        barrier.wait()
        for r in range(requests):
            body = json.dumps({"model": model_id, "prompt": PROMPTS[(c + r) % len(PROMPTS)], "max_tokens": tokens,
                               "temperature": 0}).encode()
            start = time.perf_counter()
            conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            with lock:
                if resp.status != 200:
                    errors.append(f"{resp.status}: {data}")
                else:
                    results.append((data["usage"]["completion_tokens"], time.perf_counter() - start))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, e.g. {errors[0]}")
    latencies = sorted(lat for _, lat in results)
    n_tokens = sum(tok for tok, _ in results)
    return {"clients": clients, "requests": len(results), "completion_tokens": n_tokens, "wall_s": round(wall, 3),
            "requests_per_s": round(len(results) / wall, 2), "tokens_per_s": round(n_tokens / wall, 1),
            "latency_p50_s": round(latencies[len(latencies) // 2], 3), "latency_max_s": round(latencies[-1], 3)}


def bench(args: argparse.Namespace, extra: list[str], levels: tuple[int, ...]) -> tuple[list[dict], dict]:
    port = _free_port()
    proc = start_server(args.backend, args.model, port, extra, args.threads)
    try:
        model_id = get_json(port, "/v1/models")["data"][0]["id"]
        rows = []
        for clients in levels:
            run_level(port, model_id, clients, 1, args.tokens)  # warm-up: compiles this batch shape (TF, Flax)
            rows.append(run_level(port, model_id, clients, args.requests, args.tokens))
            row = rows[-1]
            print(f"  {clients:>3} clients: {row['requests_per_s']:7.2f} req/s {row['tokens_per_s']:8.1f} tok/s",
                  file=sys.stderr)
        return rows, get_json(port, "/health")["stats"]
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("torch", "tf", "flax"), default="torch")
    parser.add_argument("--model", default=None)
    parser.add_argument("--tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--requests", type=int, default=4, help="requests per client per level")
    parser.add_argument("--round-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads of the server (default: all)")
    parser.add_argument("--warmup", action="store_true", help="start the server with --warmup (TF, Flax)")
    parser.add_argument("--compare-unbatched", action="store_true", help="also 32 clients with --max-batch 1")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/serve_<backend>.json)")
    args = parser.parse_args()
    extra = ["--round-tokens", str(args.round_tokens)] + (["--warmup"] if args.warmup else [])
    print(f"gpt2 serve, {args.backend}, max_tokens={args.tokens}, {args.requests} requests per client", file=sys.stderr)
    rows, stats = bench(args, extra, LEVELS)
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["gain"] = round(row["tokens_per_s"] / base, 2)
    result = {"backend": args.backend, "model": args.model or "default", "max_tokens": args.tokens,
              "round_tokens": args.round_tokens, "threads": args.threads, "warmup": args.warmup, "levels": rows, "engine_stats": stats,
              "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "platform": platform.platform(), "python": platform.python_version()}}
    if args.compare_unbatched:
        print("unbatched (--max-batch 1):", file=sys.stderr)
        unbatched, _ = bench(args, extra + ["--max-batch", "1"], (LEVELS[-1],))
        result["unbatched_32_clients"] = unbatched[0]
    out = Path(args.out) if args.out else HERE / "results" / f"serve_{args.backend}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| clients | requests/s | tokens/s | gain | p50 latency (s) |")
    print("|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests_per_s']} | {row['tokens_per_s']} | {row['gain']}x | "
              f"{row['latency_p50_s']} |")
    if args.compare_unbatched:
        u = result["unbatched_32_clients"]
        print(f"| 32, --max-batch 1 | {u['requests_per_s']} | {u['tokens_per_s']} | "
              f"{round(u['tokens_per_s'] / base, 2)}x | {u['latency_p50_s']} |")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
