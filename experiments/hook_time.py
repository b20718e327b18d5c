"""Where a smoothed decode step spends its time in kvsmooth's own code (SmolLM2 on the CPU).

Wraps the session's functions with ``time.perf_counter`` (the attention dispatch's own work including the
row listener, the decoder's pre/post hooks, and inside the post hook the cache site's blend) and reports, for one smoothed
``generate``, the share of the run spent inside them and milliseconds per decode step. Unlike paired
baseline/smoothed runs this needs no second run, so it stays meaningful on a machine shared with other
jobs. PyTorch's own hook dispatch is not included.

    python experiments/hook_time.py --new-tokens 128 --repeats 2
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
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from kvsmooth_hooks import KVSmoothConfig, smooth
    from kvsmooth_hooks import probe as P
    from kvsmooth_hooks import session as S
    from kvsmooth_hooks.models import chat_inputs, load_smollm2
    from kvsmooth_hooks.sites import cache as C

    acc: dict[str, float] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[name] = acc.get(name, 0.0) + time.perf_counter() - t

        return wrapper

    S.Session._pre_forward = timed("pre_forward", S.Session._pre_forward)
    S.Session._post_forward = timed("post_forward", S.Session._post_forward)
    listener = S.Session._row_listener
    C.CacheSite._blend = timed("blend", C.CacheSite._blend)
    S.Session._row_listener = lambda self, layer: timed("row_listeners", listener(self, layer))

    def dispatch(self, module, q, k, v, mask, **kw):  # the probe's attention call minus the model's attention
        t0 = time.perf_counter()
        fn = self._base_fn(module)
        t1 = time.perf_counter()
        out = fn(module, q, k, v, mask, **kw)
        t2 = time.perf_counter()
        lst = P._LISTENERS.get(id(module))
        if lst is not None:
            lst(module, q, k, mask, kw, out[1])
        acc["attention_dispatch"] = acc.get("attention_dispatch", 0.0) + (t1 - t0) + (time.perf_counter() - t2)
        return out

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
    return 0


if __name__ == "__main__":
    sys.exit(main())
