"""Time and peak memory of `gpt2-convert` on a gpt2-xl-shaped random checkpoint, against the checkpoint's size.

    python bench/bench_convert.py                        # gpt2-xl (1.56B params, 6.2 GB fp32); 10-20 minutes
    python bench/bench_convert.py --preset gpt2 --output /tmp/convert-gpt2.json   # quick check (124M params)

1. Creates (once; cached under --workdir, outside the repository) a random GPT2LMHeadModel checkpoint in the Hub's
   safetensors layout (`model.safetensors` + `config.json`). The file is written tensor by tensor, so creating it
   needs about one tensor in memory, not one model.
2. Runs each conversion in a fresh subprocess (`python -m weights_convert.cli SRC -o DST --to FMT --no-progress
   --force`) and measures its wall time and its peak resident set size: `ru_maxrss` of that child, from `os.wait4`
   (the kernel's high-water mark, VmHWM). A thread also samples the child's /proc/PID/status every 50 ms to split
   the peak into anonymous memory (what the process allocated) and file-backed pages (memory-mapped input files,
   which the kernel can drop at any time), and kills the child if the machine's available memory falls below
   --min-available-gb, so the benchmark cannot push other processes into the OOM killer.
3. Conversions: safetensors -> safetensors (plain, --max-shard-size 2GB, --dtype float16), and for each --formats
   FMT: safetensors -> FMT, then FMT -> safetensors. Every output is deleted once measured; `sync` runs (untimed)
   after each conversion so the next one does not pay for the previous one's disk writeback. Inputs are warm in
   the page cache (just written).
4. Writes --output (JSON) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpt2_core import naming  # noqa: E402
from gpt2_core.config import GPT2Config  # noqa: E402
from weights_convert.formats import numpy_dtype, output_config  # noqa: E402

HEAD = "lm"  # GPT2LMHeadModel, tied embeddings: the Hub file has no lm_head.weight
_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
GB = 1e9


# ---------------------------------------------------------------------------------------------------------------
# The random checkpoint
# ---------------------------------------------------------------------------------------------------------------


def _hub_name(key: str) -> str:
    return key if naming.is_head_key(key) else naming.BODY_PREFIX + key


def write_random_checkpoint(directory: Path, config: GPT2Config, dtype: str, seed: int = 0) -> None:
    """`model.safetensors` + `config.json` of a random `config` model, streamed one tensor at a time."""
    shapes = naming.canonical_shapes(config, HEAD)
    np_dtype = numpy_dtype(dtype)
    itemsize = np.dtype(np_dtype).itemsize
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for key, shape in shapes.items():
        nbytes = int(np.prod(shape)) * itemsize
        header[_hub_name(key)] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8 bytes
    rng = np.random.default_rng(seed)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "model.safetensors", "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for key, shape in shapes.items():
            value = rng.standard_normal(shape, dtype=np.float32)
            value *= 0.02
            if key.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                value += 1.0
            f.write(value.astype(np_dtype, copy=False).tobytes())
            del value
    output_config(config, HEAD, np_dtype).save_pretrained(tmp)
    os.sync()
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


# ---------------------------------------------------------------------------------------------------------------
# Measuring one conversion
# ---------------------------------------------------------------------------------------------------------------


def _proc_status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0]) * 1024
    return out


def _mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(cmd: list[str], log: Path, min_available: int, interval: float = 0.05) -> dict:
    """Run `cmd`; its wall time, ru_maxrss and the sampled peaks of anonymous / file-backed memory."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    killed = []
    stop = threading.Event()
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)

        def poll():
            while not stop.is_set():
                try:
                    status = _proc_status(proc.pid)
                except (OSError, ValueError):
                    return
                for k in peaks:
                    peaks[k] = max(peaks[k], status.get(k, 0))
                if _mem_available() < min_available and not killed:
                    killed.append(status.get("VmRSS", 0))
                    os.kill(proc.pid, signal.SIGKILL)  # our own child only
                stop.wait(interval)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        stop.set()
        thread.join()
    return {
        "rc": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # KiB on Linux
        "peak_anon_bytes": peaks["RssAnon"],
        "peak_file_bytes": peaks["RssFile"],
        "killed_low_memory": bool(killed),
    }


def run_conversion(name: str, src: Path, dst: Path, to: str, extra: list[str], args, work: Path) -> dict:
    cmd = [sys.executable, "-m", "weights_convert.cli", str(src), "-o", str(dst), "--to", to, "--no-progress", "--force", *extra]
    shutil.rmtree(dst, ignore_errors=True)
    log = work / (re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-") + ".log")
    print(f"  {name} ...", end="", flush=True, file=sys.stderr)
    m = measure(cmd, log, int(args.min_available_gb * GB))
    t = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t
    in_bytes = dir_size(src)
    out_bytes = dir_size(dst) if dst.exists() else 0
    row = {
        "name": name,
        "command": "gpt2-convert " + " ".join(cmd[4:]).replace(str(work) + "/", ""),
        "to": to,
        "input_bytes": in_bytes,
        "output_bytes": out_bytes,
        **m,
        "sync_after_s": round(sync_s, 2),
        "peak_rss_over_input": round(m["peak_rss_bytes"] / in_bytes, 2),
        "peak_anon_over_input": round(m["peak_anon_bytes"] / in_bytes, 2),
    }
    if m["rc"] != 0:
        row["error"] = log.read_text(errors="replace")[-2000:]
    print(
        f" {m['wall_s']:.1f} s, peak RSS {m['peak_rss_bytes'] / GB:.2f} GB "
        f"(anon {m['peak_anon_bytes'] / GB:.2f}, file {m['peak_file_bytes'] / GB:.2f}), rc={m['rc']}"
        + (" KILLED (low memory)" if m["killed_low_memory"] else ""),
        file=sys.stderr,
    )
    return row


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def machine_info() -> dict:
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for mod in ("numpy", "safetensors", "torch", "h5py", "msgpack"):
        try:
            m = __import__(mod)
            versions[mod] = getattr(m, "__version__", None) or ".".join(map(str, getattr(m, "version", ())))
        except ImportError:
            versions[mod] = None
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_total_bytes": mem,
        "mem_available_at_start_bytes": _mem_available(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{f"{k}_version": v for k, v in versions.items()},
    }


def markdown_table(result: dict) -> str:
    lines = [
        "| conversion | input | output | wall time | CPU time | peak RSS | peak RSS / input | of which anon / file-backed |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["runs"]:
        if r["rc"] != 0:
            status = "killed (low memory)" if r["killed_low_memory"] else f"failed (exit {r['rc']})"
            lines.append(f"| {r['name']} | {r['input_bytes'] / GB:.2f} GB | - | {status} | - | "
                         f"{r['peak_rss_bytes'] / GB:.2f} GB | - | - |")
            continue
        lines.append(
            f"| {r['name']} | {r['input_bytes'] / GB:.2f} GB | {r['output_bytes'] / GB:.2f} GB | {r['wall_s']:.0f} s | {r['cpu_s']:.0f} s | "
            f"{r['peak_rss_bytes'] / GB:.2f} GB | {r['peak_rss_over_input']:.2f}x | "
            f"{r['peak_anon_bytes'] / GB:.2f} / {r['peak_file_bytes'] / GB:.2f} GB |"
        )
    return "\n".join(lines)


def summary_line(result: dict) -> str:
    m = result["machine"]
    return (
        f"{result['preset']} ({result['n_params'] / 1e9:.2f}B params), {result['src_dtype']} checkpoint "
        f"{result['checkpoint_bytes'] / GB:.2f} GB; {m['cpus']} CPUs ({m['cpu_model']}), "
        f"{m['mem_total_bytes'] / GB:.1f} GB RAM, load average {m['loadavg_at_start'][0]} at the start"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="gpt2-xl", help="model shape (GPT2Config.from_preset); default gpt2-xl")
    p.add_argument("--workdir", default=None, help="scratch directory (default /tmp/gpt2-bench-PRESET)")
    p.add_argument("--src-dtype", choices=tuple(_ST_DTYPES), default="float32",
                   help="dtype of the random source checkpoint (float16/bfloat16 halve its size; tf cannot hold bfloat16)")
    p.add_argument("--formats", default="pytorch,tf,flax", help="comma-separated targets (also: openai, needs TensorFlow)")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "convert.json"), help="JSON results path")
    p.add_argument("--min-available-gb", type=float, default=1.5,
                   help="kill a conversion when the machine's MemAvailable drops below this (default 1.5)")
    p.add_argument("--keep", action="store_true", help="keep the converted outputs (default: delete after measuring)")
    p.add_argument("--report", metavar="JSON", default=None, help="only print the table of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.report:
        result = json.loads(Path(args.report).read_text())
        print(summary_line(result) + "\n")
        print(markdown_table(result))
        return 0

    config = GPT2Config.from_preset(args.preset)
    work = Path(args.workdir or f"/tmp/gpt2-bench-{args.preset}").resolve()
    if work == REPO or REPO in work.parents:
        p.error(f"--workdir must be outside the repository. Received: {work}")
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"src-safetensors-{args.src_dtype}"
    n_params = sum(int(np.prod(s)) for s in naming.canonical_shapes(config, HEAD).values())
    create_s = None
    if not (src / "model.safetensors").is_file():
        print(f"Creating a random {args.preset} checkpoint ({n_params / 1e9:.2f}B params, {args.src_dtype}) in {src} ...",
              file=sys.stderr)
        t = time.perf_counter()
        write_random_checkpoint(src, config, args.src_dtype)
        create_s = round(time.perf_counter() - t, 1)
    size = dir_size(src)
    print(f"Source: {src} ({size / GB:.2f} GB)", file=sys.stderr)

    runs = []
    for name, dst, to, extra in (
        ("safetensors -> safetensors", "out-st", "safetensors", []),
        ("safetensors -> safetensors, --max-shard-size 2GB", "out-st-sharded", "safetensors", ["--max-shard-size", "2GB"]),
        ("safetensors -> safetensors, --dtype float16", "out-st-fp16", "safetensors", ["--dtype", "float16"]),
    ):
        runs.append(run_conversion(name, src, work / dst, to, extra, args, work))
        if not args.keep:
            shutil.rmtree(work / dst, ignore_errors=True)
    for fmt in [f.strip() for f in args.formats.split(",") if f.strip()]:
        mid, back = work / f"out-{fmt}", work / f"out-{fmt}-back"
        runs.append(run_conversion(f"safetensors -> {fmt}", src, mid, fmt, [], args, work))
        if runs[-1]["rc"] == 0:
            runs.append(run_conversion(f"{fmt} -> safetensors", mid, back, "safetensors", [], args, work))
        if not args.keep:
            shutil.rmtree(mid, ignore_errors=True)
            shutil.rmtree(back, ignore_errors=True)

    result = {
        "benchmark": "gpt2-convert time and peak RSS, one fresh process per conversion",
        "command": " ".join(["python bench/bench_convert.py", *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset,
        "head": HEAD,
        "n_params": n_params,
        "src_dtype": args.src_dtype,
        "checkpoint_bytes": size,
        "create_s": create_s,
        "machine": machine_info(),
        "notes": "peak_rss_bytes is the child's ru_maxrss (VmHWM); peak_anon/file_bytes are the highest values of "
        "RssAnon/RssFile sampled every 50 ms (file-backed = memory-mapped input pages, reclaimable). Inputs were in "
        "the page cache; sync ran after each conversion, untimed (sync_after_s).",
        "runs": runs,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print("\n" + summary_line(result) + "\n")
    print(markdown_table(result))
    print(f"\nWrote {out}", file=sys.stderr)
    return 0 if all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
