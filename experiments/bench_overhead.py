"""Overhead of KVSmooth hooks during greedy decoding (SmolLM2-135M on CPU by default).

Paired runs alternate baseline and smoothed generation (same prompt, greedy, exactly N new
tokens); the table reports the median of the per-pair time ratios, which cancels slow drifts
of the machine, and the ratio of the median decode step (one forward of the model, timed by hooks on the
outermost module of both sides) over every step of every pair, which also ignores steps another job on the
machine interrupted. Arms:

* ``baseline``: the model as loaded (sdpa attention), no hooks;
* ``kvsmooth``: ``with smooth(model, cfg)`` (site ``cache``, the paper's defaults): sdpa kept,
  one attention row per layer and step recomputed by the probe;
* ``kvsmooth-kv_proj``: the same at the ``kv_proj`` site;
* ``naive``: what one would hack without the toolkit: eager attention forced, ``output_attentions=True``,
  per-layer Python hooks reading the returned probabilities and editing the cache.

``--compile``: both sides decode with a static cache and ``torch.compile`` (inductor) on ``model.forward``;
the smoothed side is a second copy of the model with one session attached for the whole run, so each
side keeps its own compiled graphs and the timed runs measure decoding, not compilation. Only the
``kvsmooth`` (cache site) arm is offered.

    python experiments/bench_overhead.py --pairs 5 --new-tokens 128
    python experiments/bench_overhead.py --pairs 5 --new-tokens 128 --prompt-tokens 600   # LLaVA-like context
    python experiments/bench_overhead.py --pairs 5 --arms kvsmooth --processes 5   # 5 fresh processes, their median
    # a GPU: the language model of LLaVA-1.5-7B (Vicuna-7B shape) with random weights, bf16, no download
    python experiments/bench_overhead.py --random-shape llava7b --device cuda --dtype bfloat16 \
        --prompt-tokens 600 --arms kvsmooth,naive        # then the same with --arms kvsmooth --compile

Within a pair the order alternates (baseline first in even pairs, the arm first in odd ones), so a
machine that speeds up or slows down within a pair does not favour one side.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

#: decoder shapes for ``--random-shape`` (random weights built from a config: nothing is downloaded)
SHAPES = {
    # the language model of LLaVA-1.5-7B (Vicuna-7B v1.5: Llama 2 7B), vocabulary with LLaVA's added tokens
    "llava7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5),
    # a CPU smoke test of the same code path
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048),
}


def naive_hooks(model, layers, lambda_ref=0.9, window=15, clip=0.2):
    """The straightforward implementation: eager probabilities from the attention output."""
    lo, hi = max(0.0, lambda_ref - clip), min(1.0, lambda_ref + clip)
    windows: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    handles = []

    def make(l):
        def hook(mod, args, kwargs, out):
            weights = out[1]
            cache = kwargs.get("cache", kwargs.get("past_key_values"))
            if weights is None or cache is None or weights.shape[2] != 1:
                windows[l].clear()
                return
            p = weights[:, :, -1].float()
            e = -(p * torch.log(p.clamp_min(1e-38))).sum(-1).mean(-1)  # [B]
            w = windows[l]
            w.append(e)
            del w[:-window]
            rank = (torch.stack(w, -1) < e[:, None]).sum(-1).float() / window
            lam = rank.clamp(lo, hi)[:, None, None]
            layer = cache.layers[l]
            for t in (layer.keys, layer.values):
                t[:, :, -1] = (1 - lam) * t[:, :, -1] + lam * t[:, :, -2]

        return hook

    for l in layers:
        handles.append(model.model.layers[l].self_attn.register_forward_hook(make(l), with_kwargs=True))
    return handles


def random_model(shape: str, device, dtype):
    """A Llama of ``SHAPES[shape]`` with random weights, built on ``device`` in ``dtype`` (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], attn_implementation="sdpa")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # random weights: exactly --new-tokens tokens
    return model


def long_prompt(tok, question: str, n_tokens: int):
    """A chat prompt of exactly ``n_tokens`` tokens: a long scene description (as a LLaVA prompt carries
    576 image tokens) followed by the question, cut from the front of the description."""
    from kvsmooth_hooks.models import chat_inputs

    scene = ("The picture shows a kitchen in the morning light. A grey cat sits on the wooden counter next to "
             "a bowl of apples, a kettle and a cutting board with bread. Behind it, a window looks out on a "
             "garden with a bicycle leaning on the fence. ")
    text = scene * (n_tokens // 30 + 2)
    inputs = chat_inputs(tok, text + question)
    ids = inputs["input_ids"]
    if ids.shape[1] < n_tokens:
        raise ValueError(f"could not build a {n_tokens}-token prompt (got {ids.shape[1]})")
    head = ids[:, :3]  # keep the chat template's opening tokens
    ids = torch.cat((head, ids[:, ids.shape[1] - (n_tokens - 3):]), 1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds of every arm first (compilation, caches)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--prompt", default="Describe a photo of a kitchen with a cat sitting on the counter.")
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="lengthen the prompt to exactly this many tokens (a scene description repeated)")
    ap.add_argument("--arms", default="kvsmooth,kvsmooth-kv_proj,naive")
    ap.add_argument("--compile", action="store_true", help="static cache + torch.compile on both sides")
    ap.add_argument("--random-shape", choices=sorted(SHAPES), help="a Llama of this shape with random weights "
                    "instead of SmolLM2; the prompt is --prompt-tokens (default 600) random token ids")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--processes", type=int, default=1,
                    help="run the whole benchmark in this many fresh processes, one after the other, and report "
                         "each one's ratios and their median: the ratio of one process varies with the process "
                         "(memory layout), by about as much as the overhead on this CPU")
    ap.add_argument("--json-out", type=Path, default=None, help=argparse.SUPPRESS)  # a worker's ratios
    args = ap.parse_args(argv)
    if args.processes > 1:
        return processes(args, list(sys.argv[1:] if argv is None else argv))
    if args.threads:
        torch.set_num_threads(args.threads)

    from tqdm import tqdm

    from kvsmooth_hooks import KVSmoothConfig, attach, smooth
    from kvsmooth_hooks.models import chat_inputs, load_smollm2

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    def load():
        if args.random_shape:
            return random_model(args.random_shape, device, dtype), None
        model, tok = load_smollm2()
        return model.to(device, dtype), tok

    model, tok = load()
    if args.random_shape:
        ids = torch.randint(3, model.config.vocab_size, (1, args.prompt_tokens or 600),
                            generator=torch.Generator().manual_seed(0)).to(device)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    else:
        inputs = long_prompt(tok, args.prompt, args.prompt_tokens) if args.prompt_tokens else chat_inputs(tok, args.prompt)
        inputs = {k: v.to(device) for k, v in inputs.items()}
    n_layers = model.config.num_hidden_layers
    layers = list(range(3, n_layers - 1))
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    compiled_arm = None
    if args.compile:
        if args.arms != "kvsmooth":
            ap.error("--compile measures the kvsmooth arm only: pass --arms kvsmooth")
        gen["cache_implementation"] = "static"
        smoothed_model = copy.deepcopy(model)
        attach(smoothed_model, KVSmoothConfig())  # one session for the whole benchmark
        model.forward = torch.compile(model.forward)
        smoothed_model.forward = torch.compile(smoothed_model.forward)

        def compiled_arm():
            smoothed_model.generate(**inputs, **gen)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    steps: list[float] = []  # wall seconds of each forward of the running generate (the first is the prompt)
    started = [0.0]

    def step_start(*_):
        sync()
        started[0] = time.perf_counter()

    def step_end(*_):
        sync()
        steps.append(time.perf_counter() - started[0])

    for m in ([model, smoothed_model] if args.compile else [model]):  # outermost: the same cost on both sides
        m.register_forward_pre_hook(step_start)
        m.register_forward_hook(step_end)

    def timed(fn):
        """(wall seconds, CPU seconds of this process, decode-step seconds): on a shared machine the CPU time is
        steadier than the wall time, and the median decode step steadier still (it ignores the steps another job
        interrupted)."""
        sync()
        steps.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync()
        return time.perf_counter() - t0, time.process_time() - c0, steps[1:]

    def baseline():
        model.generate(**inputs, **gen)

    def arm_fn(name):
        if compiled_arm is not None:
            return compiled_arm
        if name.startswith("kvsmooth"):
            site = "kv_proj" if name.endswith("kv_proj") else "cache"
            cfg = KVSmoothConfig(site=site)

            def run():
                with smooth(model, cfg):
                    model.generate(**inputs, **gen)

            return run

        def run_naive():
            model.set_attn_implementation("eager")
            handles = naive_hooks(model, layers)
            try:
                model.generate(**inputs, output_attentions=True, return_dict_in_generate=True, **gen)
            finally:
                for h in handles:
                    h.remove()
                model.set_attn_implementation("sdpa")

        return run_naive

    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    for _ in range(args.warmup):
        baseline()
        for a in arms:
            arm_fn(a)()
    results = {a: [] for a in arms}
    for pair in tqdm(range(args.pairs), desc="pairs", file=sys.stderr):
        for a in arms:
            if pair % 2 == 0:
                b = timed(baseline)
                s = timed(arm_fn(a))
            else:
                s = timed(arm_fn(a))
                b = timed(baseline)
            results[a].append((b, s))

    name = f"random-weight {args.random_shape}-shaped Llama" if args.random_shape else "SmolLM2-135M-Instruct"
    print(f"\n{name} ({args.dtype}, {device}), greedy, {args.new_tokens} new tokens, batch 1, "
          + ("static cache + torch.compile (inductor), " if args.compile else "dynamic cache, eager, ") + "prompt "
          f"{inputs['input_ids'].shape[1]} tokens, {args.pairs} pairs per arm")
    card = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {platform.processor() or platform.machine()}{card}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, smoothed layers {layers[0]}..{layers[-1]}")
    print("\n| arm | median wall s (arm / baseline) | median wall ratio | wall ratio min-max | "
          "median CPU-time ratio | CPU ratio min-max | median decode step ms (arm / baseline) | step ratio | tok/s (arm) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a in arms:
        r = ratios(results[a])
        wall = [s[0] / b[0] for b, s in results[a]]
        cpu = [s[1] / b[1] for b, s in results[a]]
        arm_t = statistics.median(s[0] for _, s in results[a])
        base_t = statistics.median(b[0] for b, _ in results[a])
        print(f"| {a} | {arm_t:.2f} / {base_t:.2f} | {r['wall']:.3f} | {min(wall):.3f}-{max(wall):.3f} | "
              f"{statistics.median(cpu):.3f} | {min(cpu):.3f}-{max(cpu):.3f} | {r['arm_step_ms']:.2f} / "
              f"{r['base_step_ms']:.2f} | {r['step']:.3f} | {args.new_tokens / arm_t:.1f} |")
    print("\ncommand: python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])))
    if args.json_out:
        args.json_out.write_text(json.dumps({a: ratios(results[a]) for a in arms}) + "\n")
    return 0


def ratios(pairs: list) -> dict:
    """Of ``[(baseline, arm)]`` timings: the median wall ratio over the pairs, the median decode step of each side
    over every step of every pair (ms) and their ratio (arm / baseline)."""
    arm_step = statistics.median(x for _, s in pairs for x in s[2]) * 1000
    base_step = statistics.median(x for b, _ in pairs for x in b[2]) * 1000
    return {"wall": statistics.median(s[0] / b[0] for b, s in pairs), "arm_step_ms": arm_step,
            "base_step_ms": base_step, "step": arm_step / base_step}


def processes(args, argv: list[str]) -> int:
    """Run the benchmark in ``args.processes`` fresh worker processes (like pyperf's workers) and summarise."""
    import subprocess
    import tempfile

    worker = [a for i, a in enumerate(argv) if not a.startswith("--processes")
              and not (i > 0 and argv[i - 1] == "--processes")]
    per_arm: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"{i}.json"
            print(f"process {i + 1}/{args.processes}", file=sys.stderr, flush=True)
            proc = subprocess.run([sys.executable, __file__, *worker, "--json-out", str(out)], stdout=subprocess.PIPE,
                                  text=True)
            if proc.returncode != 0:
                print(proc.stdout, end="")
                return proc.returncode
            for arm, r in json.loads(out.read_text()).items():
                per_arm.setdefault(arm, []).append(r)
        print(proc.stdout.split("\n| arm |")[0].strip())  # the setting lines of the last worker
    print(f"\n{args.processes} processes, {args.pairs} pairs each\n")
    print("| arm | wall ratio per process | median | step ratio per process | median |")
    print("|---|---|---|---|---|")
    for arm, rs in per_arm.items():
        wall, step = [r["wall"] for r in rs], [r["step"] for r in rs]
        print(f"| {arm} | {', '.join(f'{w:.3f}' for w in wall)} | {statistics.median(wall):.3f} | "
              f"{', '.join(f'{x:.3f}' for x in step)} | {statistics.median(step):.3f} |")
    print("\ncommand: python " + " ".join([sys.argv[0]] + argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
