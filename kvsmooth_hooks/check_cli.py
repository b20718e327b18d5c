"""``kvsmooth check --model ID_OR_FOLDER [--loader ...] [--random]``: load the model, run the checks of
:mod:`kvsmooth_hooks.check` and print one verdict line per check (exit 0 only when all pass, 2 for mistakes)."""

from __future__ import annotations

import warnings

from .check import FALLBACK_SCORER, check_model
from .runner.models import LOADERS, load_model


def add_check_parser(sub) -> None:
    """``kvsmooth check`` (registered by cli.py)."""
    c = sub.add_parser("check", help="does smoothing work on this model? layers x KV heads, sites, scorers, checks")
    c.add_argument("--model", required=True, help="a local HF model folder or a cached hub id")
    c.add_argument("--loader", choices=["auto", *LOADERS], default="auto",
                   help="which Auto class builds it (default: the first of causal-lm, image-text-to-text, seq2seq, ...)")
    c.add_argument("--random", action="store_true",
                   help="random weights from the config alone (no weights read: also for models too large here)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow the folder's own modeling files (auto_map)")
    c.add_argument("--attn-implementation", help="e.g. sdpa or eager (default: the model's)")


def _line(ok: bool | None, text: str) -> str:
    return f"{'PASS' if ok else 'SKIP' if ok is None else 'FAIL'}  {text}"


def cmd_check(args, out=print) -> int:
    """Run every check on the model; one verdict line per check; 0 when all pass, 1 otherwise."""
    model = load_model(args.model, args.loader, args.random, args.trust_remote_code, args.attn_implementation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = check_model(model, args.model)
    if report.error is not None:
        out(_line(False, f"unhooked generation: the model did not generate from a short random prompt: {report.error}"))
        return 1
    s = report.structure
    if "adapter_error" in s:
        out(_line(False, f"decoder: {s['adapter_error']}"))
    else:
        kinds = ", ".join(k for k in s.get("layer_kinds", []) if k != "attention")
        out(f"model     {type(model).__name__} ({s['model_type']}), adapter {s['adapter']}, decoder "
            f"{s.get('decoder', '?')}: {s['layers']} layers x {s['n_kv_heads']} KV heads ({s['n_heads']} query heads), "
            f"{s['attention_layers']} with their own KV cache" + (f"; other layers: {kinds}" if kinds else ""))
        out(f"rows      attention rows for row scorers come from: {s.get('rows', 'none')}")
    for site, r in report.sites.items():
        if r["status"] == "ok":
            out(_line(True, f"{site:8s} row_entropy: lambda 0 bit-identical, lambda 0.9 changes the logits "
                            f"({r['detail']}), nothing left behind"))
            continue
        out(_line(False, f"{site:8s} row_entropy: {r['status']}: {r['detail']}"))
        alt = r.get("fallback")
        if alt is not None:
            out(f"          with {FALLBACK_SCORER} (reads no row): {alt['status']}: {alt['detail']}")
    ref = report.reference
    if ref is not None:
        out(_line(True if ref["status"] == "ok" else None if ref["status"] == "skip" else False,
                  f"cache    reference decode loop (fixed lambda 0.9): {ref['detail']}"))
    ok = report.passed()
    out(f"verdict   {'smoothing works on this model' if ok else 'smoothing does NOT work on this model as it is'}")
    return 0 if ok else 1
