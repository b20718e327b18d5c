"""Shared machinery of the ablation scripts: model loading, metrics registry, resumable cells, outputs.

Every ablation is a list of *cells* (a name and a config; ``None`` = unhooked baseline). A cell's result
is one JSON line in ``<out>/results.jsonl``; rerunning skips cells already there. Each script then writes
``results.md`` / ``results.csv`` tables and a PNG plot and prints the command that reproduces it.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from kvsmooth_hooks import KVSmoothConfig  # noqa: E402

#: metric name -> function(model, tokenizer, config_or_None, args, cell_dir) -> summary dict
METRICS: dict[str, Callable] = {}
#: the columns every metric reports (percent), used by tables and plots
COLUMNS = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len", "Rep3")


def register_metric(name: str):
    def wrap(fn):
        METRICS[name] = fn
        return fn

    return wrap


@register_metric("grounded_chair")
def grounded_chair(model, tok, cfg, args, cell_dir: Path) -> dict:
    """Grounded-text CHAIR proxy (see docs/evaluation.md) on ``args.n`` scenes from ``args.seed``."""
    from kvsmooth_hooks.eval.grounded import evaluate_config

    return evaluate_config(model, tok, cfg, n_scenes=args.n, seed=args.seed, out_dir=cell_dir,
                           max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)


def add_common_args(ap: argparse.ArgumentParser, default_out: str) -> None:
    ap.add_argument("--model", default="smollm2", help="'smollm2' (default, from PyPI) or a local HF causal LM directory")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="base preset (default: the paper's defaults)")
    src.add_argument("--config", default=None, help="base config file (.yaml/.json)")
    ap.add_argument("--metric", default="grounded_chair", choices=sorted(METRICS))
    ap.add_argument("--n", type=int, default=30, help="scenes per cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--device", default="cpu", help="e.g. cuda (default cpu)")
    ap.add_argument("--dtype", default="float32", help="e.g. float16 or bfloat16 on a GPU (default float32)")
    ap.add_argument("--out", default=default_out, help="results directory (resumable)")


def base_config(args) -> KVSmoothConfig:
    return KVSmoothConfig.from_source(args.config, args.preset)


def off_arm(base: KVSmoothConfig) -> KVSmoothConfig:
    """The control arm: the base config's hooks and layers with lambda = 0."""
    return base.updated(policy="fixed", lambda_ref=0.0, clip=0.0)


def load_model(name: str, device: str = "cpu", dtype: str = "float32"):
    import torch

    if name == "smollm2":
        from kvsmooth_hooks.models import load_smollm2

        model, tok = load_smollm2()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        tok.padding_side = "left"
        model = AutoModelForCausalLM.from_pretrained(name).eval()
    return model.to(device=device, dtype=getattr(torch, dtype)), tok


def run_cells(args, cells: list[tuple[str, KVSmoothConfig | None, dict]], script: str) -> list[dict]:
    """Evaluate every cell not yet in ``<out>/results.jsonl``; returns all records in cell order.

    cells: ``(name, config or None, extra fields for the table)``.
    """
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.jsonl"
    done = {}
    if store.exists():
        for line in store.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["cell"]] = rec
    todo = [c for c in cells if c[0] not in done]
    print(f"{script}: {len(cells)} cells, {len(cells) - len(todo)} already in {store}", file=sys.stderr)
    if todo:
        model, tok = load_model(args.model, args.device, args.dtype)
        metric = METRICS[args.metric]
        for name, cfg, extra in tqdm(todo, desc=script, file=sys.stderr):
            t0 = time.perf_counter()
            summary = metric(model, tok, cfg, args, out / "cells" / name)
            rec = {"cell": name, **extra, "config": cfg.to_dict() if cfg is not None else None,
                   "metric": args.metric, "n": args.n, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 2),
                   **{k: summary.get(k) for k in COLUMNS}}
            with store.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[name] = rec
    return [done[c[0]] for c in cells]


def write_tables(records: list[dict], out: Path, keys: list[str]) -> None:
    cols = keys + list(COLUMNS)
    with (out / "results.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return "" if v is None else str(v)


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0]).as_posix())] + sys.argv[1:])


def footer(out: Path) -> None:
    cmd = command_line()
    (out / "command.txt").write_text(cmd + "\n")
    print(f"\nresults: {out}/results.md, results.csv, results.jsonl, plot PNG")
    print(f"reproduce with: {cmd}")


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot
