"""Kernel ops per decode step: vanilla decoding vs. decoding with a KVSmooth session.

At batch 1, Hugging Face decoding on a GPU is bound by kernel launches, so the number of small ops a
session adds per layer and step predicts its GPU overhead better than CPU wall time does. This script
counts them with ``torch.profiler`` on the CPU (the aten ops a GPU would launch are the same ones).

What counts as one kernel op (``count_step``):

* a *leaf* ``aten::`` op, i.e. one that calls no other aten op (composites such as ``matmul`` or
  ``softmax`` are counted through the ops they run);
* except views and metadata (``view``, ``slice``, ``select``, ``transpose``, ``expand``, ...),
  allocations (``empty*``: no kernel runs) and no-op casts (``to`` / ``contiguous`` that return their
  input: they have no child op);
* a ``_foreach_`` op counts once, whatever it runs inside (on a GPU it is one fused launch; on the CPU
  it falls back to a loop over per-tensor ops).

Each decode step is the span of one model forward with one new token (marked with
``torch.profiler.record_function`` from hooks on the model); the table gives the median over the
profiled steps.

    python experiments/count_kernels.py                      # SmolLM2, default config
    python experiments/count_kernels.py --site kv_proj --steps 6
    python experiments/count_kernels.py --tiny               # tiny random Llama (no model download)
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from collections import Counter

import torch
from torch.autograd.profiler import record_function

#: ops that only change metadata (or alias storage): no kernel runs
VIEW_OPS = frozenset(
    "aten::" + n
    for n in (
        "view as_strided slice select transpose t expand expand_as unsqueeze squeeze permute detach alias "
        "unbind split chunk narrow reshape _reshape_alias _unsafe_view view_as unflatten flatten movedim "
        "lift_fresh resolve_conj resolve_neg numpy_T diagonal split_with_sizes unfold indices values"
    ).split()
)
#: allocations: memory, no kernel
ALLOC_OPS = frozenset(
    "aten::" + n for n in "empty empty_like empty_strided new_empty new_empty_strided resize_ set_".split()
)
#: casts / layout changes that are no-ops when they have no child op
NOOP_IF_LEAF = frozenset(f"aten::{n}" for n in "to type_as contiguous".split())

STEP = "kvsmooth.count_kernels.decode_step"


@functools.lru_cache(maxsize=None)
def has_backend_kernel(name: str) -> bool:
    """Whether some overload of aten op ``name`` has its own CPU kernel (not a composite of other ops)."""
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return False
    for overload in packet.overloads():
        try:
            if getattr(packet, overload).has_kernel_for_dispatch_key(torch._C.DispatchKey.CPU):
                return True
        except RuntimeError:  # overloads listed but not registered (e.g. TorchScript-only)
            continue
    return False


def count_step(event, rule: str = "kernel") -> Counter:
    """Kernel ops under one profiler event (see the module docstring for what counts).

    rule ``kernel``: an op with its own backend kernel counts once, at the outermost level (what it
    runs inside on the CPU, such as the scalar conversion in ``mul`` or the zero fill in ``sum``, is
    that kernel's business); composites (``matmul``, ``softmax``, ``to``, ``masked_fill`` = clone +
    ``masked_fill_``...) count through the ops they run. rule ``leaf``: every leaf aten op counts
    (the rule of issue 12's first count; it counts ``mul``'s scalar conversion instead of ``mul``).
    """
    counts: Counter = Counter()

    def walk(ev):
        name = ev.name
        if name in VIEW_OPS or name in ALLOC_OPS:
            return
        if name.startswith("aten::_foreach_"):
            counts[name] += 1
            return
        if rule == "kernel" and name.startswith("aten::") and has_backend_kernel(name):
            counts[name] += 1
            return
        children = [c for c in ev.cpu_children if c.name.startswith("aten::") or c.cpu_children]
        if children:
            for c in children:
                walk(c)
        elif name.startswith("aten::") and name not in NOOP_IF_LEAF:
            counts[name] += 1

    for child in event.cpu_children:
        walk(child)
    return counts


def mark_decode_steps(model):
    """Hooks that wrap every one-token forward of ``model`` in a ``record_function`` range."""
    state = {}

    def pre(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is not None and ids.shape[1] == 1:
            state["rf"] = record_function(STEP)
            state["rf"].__enter__()

    def post(module, args, kwargs, out):
        rf = state.pop("rf", None)
        if rf is not None:
            rf.__exit__(None, None, None)

    return [
        model.register_forward_pre_hook(pre, with_kwargs=True),
        model.register_forward_hook(post, with_kwargs=True, always_call=True),
    ]


def profile_decode(model, inputs, new_tokens: int, run, rule: str = "kernel") -> tuple[int, Counter]:
    """Median kernel ops per decode step of ``run(model, inputs, new_tokens)`` and the op histogram of
    the median step."""
    handles = mark_decode_steps(model)
    try:
        run(model, inputs, 2)  # warm-up (lazy inits, attention registry)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run(model, inputs, new_tokens)
    finally:
        for h in handles:
            h.remove()
    steps = [e for e in prof.events() if e.name == STEP]
    if not steps:
        raise RuntimeError("no decode step was profiled: does the model decode one token per forward?")
    counts = [count_step(e, rule) for e in steps[1:] or steps]  # the first decode step may set up state
    totals = [sum(c.values()) for c in counts]
    median = statistics.median_low(totals)
    return median, counts[totals.index(median)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="new tokens per profiled generate call")
    ap.add_argument("--site", default="cache", choices=("cache", "kv_proj"))
    ap.add_argument("--scorer", default="row_entropy")
    ap.add_argument("--no-trace", action="store_true", help="session without trace recording")
    ap.add_argument("--cache", default="dynamic", choices=("dynamic", "static"))
    ap.add_argument("--prompt-tokens", type=int, default=0, help="pad the prompt to about this many tokens")
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2")
    ap.add_argument("--rule", default="kernel", choices=("kernel", "leaf"), help="what counts as one op (see count_step)")
    ap.add_argument("--ops", type=int, default=12, help="show the N op names that differ most")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from kvsmooth_hooks import KVSmoothConfig, smooth

    if args.tiny:
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        from tests.helpers import tiny_llama

        model = tiny_llama(layers=8)
        ids = torch.randint(1, 128, (1, max(args.prompt_tokens, 12)))
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        name = "tiny random Llama (8 layers)"
    else:
        from kvsmooth_hooks.models import chat_inputs, load_smollm2

        model, tok = load_smollm2()
        text = "Describe a photo of a kitchen with a cat sitting on the counter."
        if args.prompt_tokens:
            text = (text + " ") * max(1, args.prompt_tokens // 16)
        inputs = chat_inputs(tok, text)
        name = "SmolLM2-135M-Instruct (float32)"

    cfg = KVSmoothConfig(site=args.site, scorer=args.scorer)
    gen = dict(do_sample=False)
    if args.cache == "static":
        gen["cache_implementation"] = "static"

    def vanilla(m, inp, n):
        m.generate(**inp, max_new_tokens=n, min_new_tokens=n, **gen)

    smoothed_layers = []

    def smoothed(m, inp, n):
        with smooth(m, cfg, trace=not args.no_trace) as s:
            m.generate(**inp, max_new_tokens=n, min_new_tokens=n, **gen)
            smoothed_layers[:] = s.plan.active_layers()

    with torch.no_grad():
        base, base_ops = profile_decode(model, inputs, args.steps, vanilla, args.rule)
        ours, our_ops = profile_decode(model, inputs, args.steps, smoothed, args.rule)
    la = len(smoothed_layers)
    added = ours - base
    print(f"\n{name}, prompt {inputs['input_ids'].shape[1]} tokens, {args.cache} cache, torch {torch.__version__}, "
          f"rule {args.rule}")
    print(f"config: site={args.site} scorer={args.scorer} trace={'off' if args.no_trace else 'on'}, "
          f"{la} smoothed layers of {model.config.num_hidden_layers}\n")
    print("| arm | kernel ops / decode step | added | added per smoothed layer | ratio |")
    print("|---|---|---|---|---|")
    print(f"| vanilla | {base} | | | 1.000 |")
    print(f"| kvsmooth | {ours} | {added} | {added / max(la, 1):.2f} | {ours / base:.3f} |")
    diff = Counter(our_ops)
    diff.subtract(base_ops)
    rows = sorted(((n, c) for n, c in diff.items() if c), key=lambda x: -abs(x[1]))[: args.ops]
    if rows:
        print("\nops added per decode step (smoothed - vanilla):")
        for n, c in rows:
            print(f"  {c:+5d}  {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
