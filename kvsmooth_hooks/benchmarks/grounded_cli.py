"""``kvsmooth eval grounded``: the grounded-text CHAIR proxy, baseline vs smoothed, on a language model.

It runs a model (through :mod:`kvsmooth_hooks.benchmarks.grounded`), so it lives on the benchmark side; the
application CLI adds it to the ``eval`` command group, which otherwise only scores files.
The runner covers the same benchmark with grids and sharding: ``kvsmooth run --benchmark grounded``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..eval.records import EvalInputError

__all__ = ["add_grounded_parser"]


def add_grounded_parser(sub) -> None:
    p = sub.add_parser("grounded", help="grounded-text CHAIR proxy on a language model (baseline vs smoothed)",
                       description="Text-only CHAIR proxy: describe synthetic scenes of COCO objects (see "
                                   "docs/evaluation.md); runs the baseline and the smoothed arm, resumable.")
    p.add_argument("--model", default="smollm2", help="'smollm2' (default) or a local HF causal LM directory")
    p.add_argument("--n", type=int, default=100, help="number of scenes")
    p.add_argument("--seed", type=int, default=0)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="smoothed arm: a preset (default: the paper's defaults)")
    src.add_argument("--config", default=None, help="smoothed arm: a config file")
    p.add_argument("--arms", default="baseline,smoothed", help="comma list of baseline, smoothed")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results/grounded"), help="output directory (resumable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(eval_func=_run_grounded)




def _run_grounded(args) -> int:
    import platform

    import torch

    from .. import KVSmoothConfig
    from .grounded import evaluate_config

    cfg = KVSmoothConfig.from_source(args.config, args.preset)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ("baseline", "smoothed")]
    if bad:
        raise EvalInputError(f"--arms: unknown arm {bad[0]!r}; use baseline and/or smoothed")
    if args.model == "smollm2":
        from ..models import load_smollm2

        model, tok = load_smollm2()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    results = {}
    for arm in arms:
        results[arm] = evaluate_config(model, tok, cfg if arm == "smoothed" else None, n_scenes=args.n, seed=args.seed,
                                       out_dir=args.out / arm, max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size, progress=not args.no_progress)
    cols = ("CHAIR_S", "CHAIR_I", "Recall", "Precision", "F1", "Len", "Rep3", "seconds_per_sample")
    print(f"\ngrounded-text CHAIR proxy, {args.n} scenes (seed {args.seed}), model {args.model}, "
          f"max_new_tokens {args.max_new_tokens}; smoothed = {cfg.site} lambda_ref={cfg.lambda_ref} layers={cfg.layers}")
    print("| arm | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for arm, r in results.items():
        print(f"| {arm} | " + " | ".join(f"{r[c]:.2f}" if c == "seconds_per_sample" else f"{r[c]:.1f}" for c in cols) + " |")
    command = _command_line()
    machine = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
               "threads": torch.get_num_threads()}
    (args.out / "summary.json").write_text(json.dumps({"results": results, "command": command, "machine": machine,
                                                       "argv": sys.argv[1:]}, indent=1) + "\n")
    print(f"\nwrote {args.out}/summary.json and per-sample JSONL under {args.out}/<arm>/")
    print(f"reproduce with: {command}")
    return 0


def _command_line() -> str:
    """The command as typed (``kvsmooth eval grounded ...`` or ``python experiments/grounded_chair.py ...``)."""
    import shlex

    argv0 = Path(sys.argv[0] if sys.argv and sys.argv[0] else "kvsmooth")
    parts = argv0.with_suffix("").parts
    if "kvsmooth_hooks" in parts:  # python -m kvsmooth_hooks.cli / kvsmooth_hooks.eval.cli
        head = ["python", "-m", ".".join(parts[parts.index("kvsmooth_hooks"):])]
    elif argv0.suffix == ".py":
        head = ["python", argv0.as_posix()]
    else:
        head = [argv0.name]
    return " ".join(head + [shlex.quote(a) for a in sys.argv[1:]])
