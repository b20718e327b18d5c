"""Where a smoothed decode step spends its time in kvsmooth's own code (SmolLM2 on the CPU).

Wraps the session's functions with ``time.perf_counter`` (the attention dispatch's own work including the
row listener, the decoder's pre/post hooks, and inside the post hook the cache site's blend) and reports, for one smoothed
``generate``, the share of the run spent inside them and milliseconds per decode step. Unlike paired
baseline/smoothed runs this needs no second run, so it stays meaningful on a machine shared with other
jobs. PyTorch's own hook dispatch is not included.

``--paired N`` also runs N interleaved pairs of an unhooked and a smoothed ``generate`` and times every decode
step (hooks on the outermost module, as ``bench_overhead.py`` does). Per smoothed step it subtracts the time
spent in kvsmooth's code during that step, which answers whether smoothing slows the model's own work
(caches, allocator) or only adds its own: if the median of (step - own) equals the median unhooked step, the
whole overhead is the toolkit's code.

    python experiments/hook_time.py --new-tokens 128 --repeats 2
    python experiments/hook_time.py --new-tokens 64 --repeats 0 --paired 8
"""

from __future__ import annotations

import argparse
import functools
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--paired", type=int, default=0, help="interleaved unhooked/smoothed pairs, per-step split")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kvsmooth_hooks import KVSmoothConfig, smooth
    from kvsmooth_hooks.core import probe as P
    from kvsmooth_hooks.core import session as S
    from kvsmooth_hooks.models import chat_inputs, load_smollm2
    from kvsmooth_hooks.core.sites import cache as C

    acc: dict[str, float] = {}
    own_now = [0.0]  # kvsmooth time inside the current decode step (--paired)

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                acc[name] = acc.get(name, 0.0) + dt
                if name not in ("row_listeners", "blend"):  # nested in dispatch / post-forward
                    own_now[0] += dt

        return wrapper

    S.Session._pre_forward = timed("pre_forward", S.Session._pre_forward)
    S.Session._post_forward = timed("post_forward", S.Session._post_forward)
    listener = S.Session._row_listener
    C.CacheSite._blend = timed("blend", C.CacheSite._blend)
    S.Session._row_listener = lambda self, layer: timed("row_listeners", listener(self, layer))

    # the probe's attention call minus the model's own attention: time the probe's __call__ whole and subtract
    # the base implementation it looks up, so this script never copies the probe's dispatch
    call, base_fn, model_attention = P._Dispatch.__call__, P._Dispatch._base_fn, [0.0]

    def timed_base_fn(self, module):
        fn = base_fn(self, module)

        def run(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                model_attention[0] += time.perf_counter() - t

        return run

    def dispatch(self, *a, **k):
        before, t = model_attention[0], time.perf_counter()
        try:
            return call(self, *a, **k)
        finally:
            dt = time.perf_counter() - t - (model_attention[0] - before)
            acc["attention_dispatch"] = acc.get("attention_dispatch", 0.0) + dt
            own_now[0] += dt

    P._Dispatch._base_fn = timed_base_fn
    P._Dispatch.__call__ = dispatch

    model, tok = load_smollm2()
    inputs = chat_inputs(tok, "Describe a photo of a kitchen with a cat sitting on the counter.")
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    steps = args.new_tokens - 1
    with smooth(model, KVSmoothConfig()):  # warm-up
        model.generate(**inputs, **gen)
    print(f"SmolLM2-135M-Instruct, default config (cache site, row_entropy), {args.new_tokens} new tokens, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print("\n| run | total s | share in kvsmooth code | ms/step: attention dispatch (incl. row listeners) | "
          "row listeners | pre-forward | post-forward | of which the blend |")
    print("|---|---|---|---|---|---|---|---|")
    for r in range(args.repeats):
        acc.clear()
        t = time.perf_counter()
        with smooth(model, KVSmoothConfig()):
            model.generate(**inputs, **gen)
        total = time.perf_counter() - t
        own = sum(v for k, v in acc.items() if k not in ("row_listeners", "blend"))  # nested in dispatch / post
        ms = {k: acc.get(k, 0.0) * 1000 / steps for k in
              ("attention_dispatch", "row_listeners", "pre_forward", "post_forward", "blend")}
        print(f"| {r} | {total:.2f} | {own / total * 100:.1f} % | " + " | ".join(f"{v:.2f}" for v in ms.values()) + " |")
    if args.paired:
        paired(model, inputs, gen, args.paired, own_now)
    return 0


def paired(model, inputs, gen, pairs: int, own_now: list) -> None:
    """Interleaved unhooked / smoothed runs; per decode step: its wall time and, smoothed, kvsmooth's share."""
    import statistics

    from kvsmooth_hooks import KVSmoothConfig, smooth

    steps: list[float] = []
    owns: list[float] = []

    def pre(module, args, kwargs):
        own_now[0] = 0.0
        steps.append(time.perf_counter())

    def post(module, args, output):
        steps[-1] = time.perf_counter() - steps[-1]
        owns.append(own_now[0])

    handles = [model.register_forward_pre_hook(pre, with_kwargs=True), model.register_forward_hook(post)]
    base, smoothed, own = [], [], []
    model.generate(**inputs, **gen)  # warm-up of the unhooked side
    try:
        for p in range(pairs):
            for arm in ("base", "smoothed") if p % 2 == 0 else ("smoothed", "base"):
                steps.clear()
                owns.clear()
                if arm == "base":
                    model.generate(**inputs, **gen)
                    base += steps[1:]  # decode steps only (the first forward is the prompt)
                else:
                    with smooth(model, KVSmoothConfig()):
                        model.generate(**inputs, **gen)
                    smoothed += steps[1:]
                    own += owns[1:]
    finally:
        for h in handles:
            h.remove()
    b, s, o = statistics.median(base), statistics.median(smoothed), statistics.median(own)
    rest = statistics.median(x - y for x, y in zip(smoothed, own))
    print(f"\n{pairs} interleaved pairs, {len(base)} decode steps per side (median over all steps):\n")
    print("| unhooked step ms | smoothed step ms | ratio | kvsmooth code ms/step | smoothed step minus kvsmooth code ms | "
          "its ratio to the unhooked step |")
    print("|---|---|---|---|---|---|")
    print(f"| {b * 1e3:.2f} | {s * 1e3:.2f} | {s / b:.4f} | {o * 1e3:.2f} | {rest * 1e3:.2f} | {rest / b:.4f} |")


if __name__ == "__main__":
    sys.exit(main())
