"""`gpt2-verify MODEL [--backends torch,tf,flax] [--json]`: does one checkpoint compute the same thing everywhere?

Loads the checkpoint into the NumPy reference (float64) and into each requested backend, runs fixed prompts (a
left-padded batch included) and reports, per backend and per pair:

* max abs logit difference (uncached forward),
* max abs difference between cached decoding (prompt, then one token at a time) and the uncached forward,
* how many greedy-generated tokens agree with the reference's greedy decoding.

Before any of that, every weight is checked to be finite (`--no-check-finite` skips it): a NaN or inf anywhere (say
one row of `wpe` that the prompts never reach) is an error naming the first such tensor, not a pass.

Exit status: 0 all within tolerance, 1 a tolerance exceeded (or a backend not installed, or another failure), 2 bad
input (usage, missing or corrupt files), 130 interrupted; errors are one line on stderr, the traceback with -v. Every
backend is driven through `gpt2_apps.backends` with full fp32 matmul precision (no TF32, XLA "highest").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gpt2_apps.backends import BACKENDS, Backend, available_backends, get_backend
from gpt2_apps.errors import EXIT_FAILURE, EXIT_OK, UsageError, run_command
from gpt2_core import naming, reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation import make_generation_config, reference_greedy
from gpt2_core.generation_config import GenerationConfig

logger = logging.getLogger(__name__)
TOLERANCE = 1e-4  # fp32, max abs logit difference
PROMPT_IDS = [[464, 2068, 7586, 21831, 18045, 625, 262, 16931], [15496, 11, 616], [40, 716, 407, 1654, 644]]


@dataclass
class Report:
    model: str
    backends: list[str]
    tolerance: float
    per_backend: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ok: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _prompts(config: GPT2Config, max_new: int) -> tuple[np.ndarray, np.ndarray]:
    rows = [[t % config.vocab_size for t in r] for r in PROMPT_IDS]
    if not isinstance(max_new, int) or max_new < 1 or config.n_positions - max_new < 1:
        raise ValueError(
            f"--max-new-tokens leaves no room for a prompt in this model. Received: max_new_tokens={max_new!r}, "
            f"n_positions={config.n_positions}. Use a value from 1 to {max(1, config.n_positions - 1)}."
        )
    T = min(max(len(r) for r in rows), config.n_positions - max_new)
    rows = [r[:T] for r in rows]
    ids = np.zeros((len(rows), T), np.int64)
    mask = np.zeros((len(rows), T), np.int64)
    for i, r in enumerate(rows):
        ids[i, T - len(r) :], mask[i, T - len(r) :] = r, 1
    return ids, mask


def _max(a, b) -> float:
    """Max abs difference; NaN when either side holds a NaN (np.max propagates it), so it never passes `<=`."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def installed_backends() -> list[str]:
    """The backends whose framework is importable here."""
    return available_backends()


class NonFiniteWeightsError(ValueError):
    """A checkpoint's weights hold NaN or inf: `gpt2-verify` reports it as a failed check (exit status 1)."""


def check_finite_weights(canonical: dict[str, np.ndarray], model: str | os.PathLike) -> None:
    """NonFiniteWeightsError naming the first tensor holding a NaN or inf (and how many more do)."""
    from weights_convert.formats.base import non_finite, non_finite_message

    bad = non_finite(canonical)
    if bad:
        raise NonFiniteWeightsError(
            non_finite_message(bad, f"model={str(model)!r}") + " The checkpoint cannot compute finite logits; use "
            "one saved before the values diverged (or pass --no-check-finite to compare it anyway)."
        )


def _as_lm(model: str | os.PathLike, check_finite: bool = True) -> tuple[GPT2Config, dict[str, np.ndarray], str | None]:
    """(config, canonical float32 LM weights, the directory the backends' `from_pretrained` reads or None) for a
    checkpoint in any format `weights_convert` reads. Hub-format directories are loaded through `from_pretrained`
    (so the loader is checked too); any other format is built from the canonical weights (a backend never parses
    other formats itself)."""
    from weights_convert import detect_format, load_checkpoint

    fmt = detect_format(model)
    config, canonical, head = load_checkpoint(model)
    if check_finite:
        check_finite_weights(canonical, model)
    if head not in ("lm", "double", "base"):
        raise ValueError(
            f"gpt2-verify compares language-model outputs; this checkpoint is a {head!r} model. Received: {str(model)!r}."
        )
    canonical = {k: v for k, v in canonical.items() if not naming.is_head_key(k) or k == "lm_head.weight"}
    if not config.tie_word_embeddings and "lm_head.weight" not in canonical:
        raise ValueError(f"The checkpoint has no LM head. Received: {str(model)!r}.")
    canonical = {k: np.asarray(v, dtype=np.float32) for k, v in canonical.items()}
    loadable = str(model) if fmt in ("safetensors", "pytorch") and Path(model).is_dir() else None
    return config, canonical, loadable


def _load(backend: Backend, config: GPT2Config, canonical: dict[str, np.ndarray], loadable: str | None) -> Any:
    backend.highest_precision()
    if loadable is not None:
        return backend.load("lm", loadable)
    return backend.build("lm", config, canonical)


def _logits(backend: Backend, model: Any, ids, mask, past=None, use_cache: bool = False):
    inputs = dict(input_ids=ids, attention_mask=mask, use_cache=use_cache)
    if past is not None:
        inputs["past_key_values"] = past
    out = backend.forward(model, "lm", **inputs)
    return out["logits"], out.get("past_key_values")


def verify_model(model_dir: str | os.PathLike, backends: Sequence[str] = BACKENDS, max_new_tokens: int = 8,
                 tolerance: float = TOLERANCE, check_finite: bool = True) -> Report:
    """Run the checks described in the module docstring on a checkpoint in any format `gpt2-convert` reads; never
    raises for a numeric mismatch (see `Report.ok`).

    Raises:
        NonFiniteWeightsError: A weight holds NaN or inf (named; unless `check_finite=False`).
        ValueError: Bad arguments, corrupt files.
    """
    config, canonical, loadable = _as_lm(model_dir, check_finite)
    return _verify_loaded(str(model_dir), config, canonical, loadable, backends, max_new_tokens, tolerance)


def _verify_loaded(model_dir, config, canonical, loadable, backends, max_new_tokens, tolerance) -> Report:
    ids, mask = _prompts(config, max_new_tokens)
    ref_logits = reference.lm_logits(canonical, config, reference.forward(canonical, config, ids, attention_mask=mask)["last_hidden_state"])
    real = mask.astype(bool)
    gen = make_generation_config(config, ids.shape[1], max_new_tokens=max_new_tokens)
    ref_tokens = reference_greedy(canonical, config, ids, mask, gen)
    report = Report(model=model_dir, backends=list(backends), tolerance=tolerance)
    logits = {"reference": ref_logits}
    tokens = {"reference": ref_tokens}
    for name in backends:
        b = get_backend(name)
        model = _load(b, config, canonical, loadable)
        out, _ = _logits(b, model, ids, mask)
        logits[name] = out
        # cached: first all but the last 3 tokens, then one at a time
        T = ids.shape[1]
        k = max(1, T - 3)
        steps, past = [], None
        first, past = _logits(b, model, ids[:, :k], mask[:, :k], use_cache=True)
        steps.append(first)
        for t in range(k, T):
            step, past = _logits(b, model, ids[:, t : t + 1], mask[:, : t + 1], past=past, use_cache=True)
            steps.append(step)
        cached = np.concatenate(steps, axis=1)
        # greedy, as the reference decodes: the checkpoint's generation_config.json (it may sample) is not used
        model.generation_config = GenerationConfig.from_model_config(config)
        toks = b.generate(model, ids, attention_mask=mask, max_new_tokens=max_new_tokens)
        tokens[name] = toks
        new_ref, new = ref_tokens[:, T:], toks[:, T:]
        n = min(new_ref.shape[1], new.shape[1])
        agree = int((new_ref[:, :n] == new[:, :n]).sum())
        entry = {
            "max_abs_logit_diff_vs_reference": _max(out[real], ref_logits[real]),
            "max_abs_cached_vs_uncached": _max(cached[real], out[real]),
            "greedy_tokens_agree_with_reference": f"{agree}/{new_ref.size}",
        }
        entry["ok"] = (
            entry["max_abs_logit_diff_vs_reference"] <= tolerance
            and entry["max_abs_cached_vs_uncached"] <= tolerance
            and agree == new_ref.size
            and new.shape == new_ref.shape
        )
        report.per_backend[name] = entry
        report.ok &= entry["ok"]
    names = list(backends)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            na, nb = tokens[a][:, ids.shape[1]:], tokens[b][:, ids.shape[1]:]
            n = min(na.shape[1], nb.shape[1])
            entry = {
                "max_abs_logit_diff": _max(logits[a][real], logits[b][real]),
                "greedy_tokens_agree": f"{int((na[:, :n] == nb[:, :n]).sum())}/{na.size}",
            }
            entry["ok"] = entry["max_abs_logit_diff"] <= tolerance and np.array_equal(na, nb)
            report.pairs[f"{a}-{b}"] = entry
            report.ok &= entry["ok"]
    return report


def verify_pair(src: str | os.PathLike, dst: str | os.PathLike, backends: Sequence[str] | None = None,
                tolerance: float = TOLERANCE) -> Report:
    """`gpt2-convert --verify`: the converted checkpoint holds the source's tensors (exactly in fp32, within the
    rounding of a lower precision) and passes `verify_model` in the installed backends."""
    from weights_convert import load_checkpoint

    _, a, _ = load_checkpoint(src)
    _, b, _ = load_checkpoint(dst)
    config, canonical, loadable = _as_lm(dst)
    report = _verify_loaded(str(dst), config, canonical, loadable, backends or installed_backends(), 8, tolerance)
    worst, keys = 0.0, sorted(set(a) & set(b))
    for k in keys:
        x, y = np.asarray(a[k], np.float64), np.asarray(b[k], np.float64)
        scale = max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0
        worst = max(worst, float(np.max(np.abs(x - y))) / scale if x.size else 0.0)
    dtype = np.asarray(b[keys[0]]).dtype if keys else np.dtype(np.float32)
    allowed = 0.0 if dtype == np.float32 else 2.0 ** -7  # bf16 has 8 bits of mantissa
    same_keys = set(a) == set(b)
    report.pairs["source-converted"] = {
        "same_tensor_names": same_keys,
        "max_relative_tensor_diff": worst,
        "ok": same_keys and worst <= allowed,
    }
    report.ok &= report.pairs["source-converted"]["ok"]
    return report


def format_report(report: Report) -> str:
    lines = [f"gpt2-verify {report.model} (tolerance {report.tolerance:g})"]
    for name, e in report.per_backend.items():
        lines.append(
            f"  {name:6s} vs reference: logits {e['max_abs_logit_diff_vs_reference']:.2e}  cached-vs-uncached "
            f"{e['max_abs_cached_vs_uncached']:.2e}  greedy {e['greedy_tokens_agree_with_reference']}  "
            f"{'OK' if e['ok'] else 'FAIL'}"
        )
    for pair, e in report.pairs.items():
        if "max_abs_logit_diff" in e:
            lines.append(f"  {pair:12s}: logits {e['max_abs_logit_diff']:.2e}  greedy {e['greedy_tokens_agree']}  {'OK' if e['ok'] else 'FAIL'}")
        else:
            lines.append(f"  {pair}: same names {e['same_tensor_names']}, max relative tensor diff {e['max_relative_tensor_diff']:.2e}  {'OK' if e['ok'] else 'FAIL'}")
    nan = [name for name, e in [*report.per_backend.items(), *report.pairs.items()]
            if any(isinstance(v, float) and not np.isfinite(v) for v in e.values())]
    if nan:
        lines.append(f"FAILED: non-finite logits (NaN or inf) in {', '.join(nan)}")
    else:
        lines.append("PASSED" if report.ok else "FAILED: a difference exceeds the tolerance")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt2-verify", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a checkpoint in any format gpt2-convert reads (directory or file)")
    p.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated subset of torch,tf,flax")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=TOLERANCE)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-check-finite", dest="check_finite", action="store_false",
                   help="do not refuse weights holding NaN or inf (by default the first such tensor is named)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress; show the traceback of an error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 with a usage message on bad arguments
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def run() -> int:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
        bad = [b for b in backends if b not in BACKENDS]
        if bad or not backends:
            raise UsageError(
                f"Unknown backend. Received: --backends {args.backends!r}. Use a comma-separated subset of {','.join(BACKENDS)}."
            )
        for name in backends:
            get_backend(name).require()
        try:
            report = verify_model(args.model, backends, args.max_new_tokens, args.tolerance, args.check_finite)
        except NonFiniteWeightsError as e:  # a failed check, reported like one: exit status 1
            out = json.dumps({"model": str(args.model), "ok": False, "error": str(e)}, indent=2) if args.json else (
                f"gpt2-verify {args.model}\nFAILED: {e}"
            )
            sys.stdout.write(out + "\n")
            return EXIT_FAILURE
        sys.stdout.write((report.to_json() if args.json else format_report(report)) + "\n")
        return EXIT_OK if report.ok else EXIT_FAILURE

    return run_command("gpt2-verify", run, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
