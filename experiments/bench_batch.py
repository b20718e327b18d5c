"""Throughput of batched generation, with and without smoothing, and the runner's own cost per item.

For each batch size (default 1, 4, 8, 16) the same items are generated greedily with exactly ``--new-tokens`` new
tokens each (EOS disabled, so every arm does the same work), as the unhooked ``baseline`` and inside
``smooth(model, cfg, trace=False)`` (the paper's config: site ``cache``, row entropy, layers 3..L-2). Baseline and
smoothed alternate ``--repeats`` times (the order flips every repeat); the table gives the median items/s of each
and the median of the per-repeat time ratios smoothed / baseline.

``--runner``: also times the experiment runner (``kvsmooth run``, in this process, the model already loaded, one
``baseline`` arm, no bootstrap) against a bare loop doing what the runner's model bundle does (chat template, left
padding, ``generate``, decode) on the same items and batch size. The runner's own cost per item is
``(runner loop - bare loop) / items``; the time of the final report (tables, plots) is listed apart, since it is paid
once per run, not per item.

Items: the grounded-text proxy's prompts (``kvsmooth_hooks.benchmarks.grounded.make_scenes``), SmolLM2-135M on CPU by
default. A GPU recipe (not run here: this project's machines have none): a model with the language-model shape of
LLaVA-1.5-7B and random weights (nothing downloaded), prompts of ``--prompt-tokens`` random tokens (576 image
tokens + text in LLaVA-1.5):

    python experiments/bench_batch.py --n 16 --new-tokens 32 --repeats 3                       # SmolLM2, CPU
    python experiments/bench_batch.py --n 16 --new-tokens 32 --batch-sizes 1,8 --runner        # + runner overhead
    python experiments/bench_batch.py --random-shape llava7b --device cuda --dtype float16 \\
        --prompt-tokens 600 --new-tokens 128 --n 32 --batch-sizes 1,4,8,16 --repeats 3         # GPU recipe

Every run prints and (``--out``) writes the machine, the thread counts (torch intra-op threads, OMP/MKL variables,
CPU count) and the load average before and after: numbers from a machine shared with other jobs are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_overhead beside this script
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from bench_overhead import SHAPES, random_model  # noqa: E402

from kvsmooth_hooks.models import chat_inputs  # noqa: E402
from kvsmooth_hooks.runner.report import machine_info  # noqa: E402


def machine() -> dict:
    """The runner's machine record, plus the inter-op threads and the load average (noisy on a shared machine)."""
    return {**machine_info(), "torch_interop_threads": torch.get_num_interop_threads(), "loadavg": list(os.getloadavg())}


def load(args):
    """``(model, tokenizer or None, items)``: items are prompt strings (SmolLM2) or ``[P]`` token tensors."""
    dtype = getattr(torch, args.dtype)
    if args.random_shape:
        torch.manual_seed(0)
        model = random_model(args.random_shape, args.device, dtype)  # EOS disabled: exactly --new-tokens tokens
        g = torch.Generator().manual_seed(0)
        items = [torch.randint(3, model.config.vocab_size, (args.prompt_tokens,), generator=g) for _ in range(args.n)]
        return model, None, items
    from kvsmooth_hooks.benchmarks.grounded import make_scenes
    from kvsmooth_hooks.models import load_smollm2

    model, tok = load_smollm2(quiet=True)
    model = model.to(args.device, dtype)
    model.generation_config.eos_token_id = None  # every arm does the same work
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or tok.pad_token_id or 0
    return model, tok, [s.prompt() for s in make_scenes(args.n, args.seed)]


def encode(tok, batch, device):
    if tok is None:  # equal-length random prompts
        ids = torch.stack(batch).to(device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return chat_inputs(tok, batch).to(device)  # chat template, left padding


def bare_loop(model, tok, items, batch_size, new_tokens, config=None) -> float:
    """Seconds for all items: encode, generate (inside ``smooth`` when ``config``), decode."""
    from kvsmooth_hooks import smooth

    sync = torch.cuda.synchronize if torch.cuda.is_available() and model.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for start in range(0, len(items), batch_size):
        enc = encode(tok, items[start:start + batch_size], model.device)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        with torch.inference_mode():
            if config is None:
                out = model.generate(**enc, **kw)
            else:
                with smooth(model, config, trace=False):
                    out = model.generate(**enc, **kw)
        if tok is not None:
            tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    sync()
    return time.perf_counter() - t0


def batching_table(args, model, tok, items, cfg) -> list[dict]:
    rows = []
    bare_loop(model, tok, items[:2], 1, 4)  # warm-up (allocator, kernels)
    for bs in args.batch_sizes:
        base, smoothed, ratios = [], [], []
        for r in range(args.repeats):
            order = ("baseline", "smoothed") if r % 2 == 0 else ("smoothed", "baseline")
            t = {}
            for arm in order:
                t[arm] = bare_loop(model, tok, items, bs, args.new_tokens, None if arm == "baseline" else cfg)
            base.append(t["baseline"])
            smoothed.append(t["smoothed"])
            ratios.append(t["smoothed"] / t["baseline"])
        n = len(items)
        row = {"batch_size": bs, "items": n, "new_tokens": args.new_tokens,
               "baseline_items_per_s": n / statistics.median(base), "smoothed_items_per_s": n / statistics.median(smoothed),
               "baseline_tokens_per_s": n * args.new_tokens / statistics.median(base),
               "smoothed_over_baseline": statistics.median(ratios), "ratios": [round(x, 4) for x in ratios]}
        rows.append(row)
        print(f"batch {bs:>2}: baseline {row['baseline_items_per_s']:.3f} items/s "
              f"({row['baseline_tokens_per_s']:.1f} tok/s), smoothed {row['smoothed_items_per_s']:.3f} items/s, "
              f"smoothed/baseline {row['smoothed_over_baseline']:.3f} {row['ratios']}", flush=True)
    return rows


def runner_overhead(args, model, tok, items) -> list[dict]:
    """The runner (in process, model preloaded) vs :func:`bare_loop` on the same items, alternating."""
    import kvsmooth_hooks.runner.cli as runner_cli
    import kvsmooth_hooks.runner.models as runner_models

    bundle = runner_models.hf_bundle(model, tok)
    real_load, real_finish = runner_models.load_bundle, runner_cli._finish
    finish_s = []

    def timed_finish(*a, **k):
        t0 = time.perf_counter()
        try:
            return real_finish(*a, **k)
        finally:
            finish_s.append(time.perf_counter() - t0)

    runner_models.load_bundle = lambda *a, **k: bundle
    runner_cli._finish = timed_finish
    rows = []
    try:
        for bs in args.runner_batch_sizes:
            bare, loop, report = [], [], []
            for r in range(args.repeats):
                for which in (("bare", "runner") if r % 2 == 0 else ("runner", "bare")):
                    if which == "bare":
                        bare.append(bare_loop(model, tok, items, bs, args.new_tokens))
                        continue
                    with tempfile.TemporaryDirectory() as d:
                        argv = ["--model", "smollm2", "--benchmark", "grounded", "--n", str(len(items)), "--seed",
                                str(args.seed), "--arms", "baseline", "--batch-size", str(bs), "--max-new-tokens",
                                str(args.new_tokens), "--bootstrap", "0", "--no-progress", "--out", d]
                        finish_s.clear()
                        t0 = time.perf_counter()
                        with open(os.devnull, "w") as null:
                            stdout, sys.stdout = sys.stdout, null
                            try:
                                runner_cli.main(argv)
                            finally:
                                sys.stdout = stdout
                        total = time.perf_counter() - t0
                        report.append(sum(finish_s))
                        loop.append(total - report[-1])
            n = len(items)
            ratios = [l / b for l, b in zip(loop, bare)]
            row = {"batch_size": bs, "items": n, "bare_s_per_item": statistics.median(bare) / n,
                   "runner_loop_s_per_item": statistics.median(loop) / n,
                   "runner_cost_s_per_item": (statistics.median(loop) - statistics.median(bare)) / n,
                   "runner_over_bare": statistics.median(ratios), "ratios": [round(x, 4) for x in ratios],
                   "report_s_per_run": statistics.median(report)}
            rows.append(row)
            print(f"runner batch {bs:>2}: bare {row['bare_s_per_item']:.3f} s/item, runner loop "
                  f"{row['runner_loop_s_per_item']:.3f} s/item, runner/bare {row['runner_over_bare']:.4f} "
                  f"{row['ratios']}, report {row['report_s_per_run']:.2f} s per run", flush=True)
    finally:
        runner_models.load_bundle, runner_cli._finish = real_load, real_finish
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=16, help="items (default 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the grounded proxy's scenes (SmolLM2 items)")
    ap.add_argument("--new-tokens", type=int, default=32, help="new tokens per item, exactly (EOS disabled)")
    ap.add_argument("--batch-sizes", default="1,4,8,16", help="comma-separated batch sizes of the batching table")
    ap.add_argument("--repeats", type=int, default=2, help="baseline/smoothed alternations per batch size")
    ap.add_argument("--runner", action="store_true", help="also time the runner against a bare loop (SmolLM2 only)")
    ap.add_argument("--runner-batch-sizes", default="1,8", help="--runner: comma-separated batch sizes")
    ap.add_argument("--random-shape", choices=sorted(SHAPES), default=None, help="random-weight model of this shape")
    ap.add_argument("--prompt-tokens", type=int, default=600, help="--random-shape: prompt length")
    ap.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                    help="the model's dtype (default float32)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: as the process has it)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
    args.runner_batch_sizes = [int(x) for x in args.runner_batch_sizes.split(",")]
    if args.runner and args.random_shape:
        ap.error("--runner times the runner on SmolLM2 (its benchmark items); leave out --random-shape")
    if args.threads:
        torch.set_num_threads(args.threads)
    from kvsmooth_hooks import KVSmoothConfig

    before = machine()
    print(json.dumps(before))
    model, tok, items = load(args)
    cfg = KVSmoothConfig()  # the paper's defaults
    result = {"command": " ".join(["python", "experiments/bench_batch.py", *(argv or sys.argv[1:])]),
              "machine": before, "model": args.random_shape or "SmolLM2-135M-Instruct", "config": cfg.to_dict(),
              "batching": batching_table(args, model, tok, items, cfg)}
    if args.runner:
        result["runner"] = runner_overhead(args, model, tok, items)
    result["loadavg_after"] = list(os.getloadavg())
    print(f"load average before {before['loadavg']}, after {result['loadavg_after']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
