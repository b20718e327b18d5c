"""Memory of a long-lived session: resident set size over many generate calls in one ``attach()``.

Arms: ``trace=False`` (nothing recorded), ``trace_runs=1`` (only the latest run kept), the default (the latest
100 runs) and ``trace_runs=None`` (every run kept, which grows by design). A tiny random Llama keeps it fast; the session code is the same.

    python experiments/bench_memory.py --calls 1000
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's package

from kvsmooth_hooks import KVSmoothConfig, attach  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, 128, (2, 8))
    print(f"{'arm':<16} {'calls':>6} {'RSS after 100 (MB)':>19} {'RSS at end (MB)':>16} {'growth (MB)':>12} {'runs kept':>10}")
    for name, opts in (("trace=False", {"trace": False}), ("trace_runs=1", {"trace_runs": 1}), ("default", {}),
                       ("trace_runs=None", {"trace_runs": None})):
        session = attach(model, KVSmoothConfig(layers="1:-1"), **opts)
        try:
            for i in range(args.calls):
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                               do_sample=False)
                if i == 99:
                    gc.collect()
                    warm = rss_mb()
            gc.collect()
            end = rss_mb()
        finally:
            session.remove()
        print(f"{name:<16} {args.calls:>6} {warm:>19.1f} {end:>16.1f} {end - warm:>12.1f} {len(session.trace):>10}")


if __name__ == "__main__":
    main()
