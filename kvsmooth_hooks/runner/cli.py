"""``kvsmooth run`` / ``python -m kvsmooth_hooks.run``: any benchmark x any model x arms or grids, resumable,
data parallel under ``torchrun`` / ``accelerate launch``.

    kvsmooth run --model llava-hf/llava-1.5-7b-hf --benchmark chair --data coco/ --arms baseline,llava-1.5 --n 500
    kvsmooth run --model Qwen/Qwen2-VL-7B-Instruct --benchmark pope --data pope/ --set split=adversarial \\
        --grid layers --out runs/qwen-pope
    torchrun --nproc-per-node 8 -m kvsmooth_hooks.run --model ... --benchmark chair --data coco/ --out runs/x

Outputs in ``--out``: ``results.md`` / ``results.csv`` / ``results.json`` (one row per arm, 95% bootstrap
intervals, seconds per item), plots for grids, ``command.txt``, ``machine.json``, ``run.json`` and
``cells/<arm>/records.jsonl`` (one line per item). See docs/experiments.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Sequence

from ..core.config import ConfigError, KVSmoothConfig

__all__ = ["build_parser", "main", "run", "with_defaults"]


def build_parser(prog: str = "python -m kvsmooth_hooks.run") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    return ap


def add_arguments(ap: argparse.ArgumentParser, defaults: dict[str, str] | None = None) -> None:
    """The runner's options on ``ap``. ``defaults`` (``{"--flag": "value"}`` as on a command line): a command that is
    the runner with other defaults; set on ``ap`` (each option's type converts them) and shown in ``--help``."""
    from ..benchmarks import BENCHMARKS
    from ..core.errors import add_traceback_option
    from ..core.registry import site_names
    from .arms import GRIDS
    from .paper import add_arguments as add_paper_arguments, batch_size_arg

    defaults = defaults or {}

    def default(flag: str, usual: str) -> str:  # the help's default: the command's own, else the runner's
        return f"default {defaults[flag]}".replace("%", "%%") if flag in defaults else usual

    m = ap.add_argument_group("model")
    m.add_argument("--model", required="--model" not in defaults,
                   help=f"HF hub id or local folder (VLM or causal LM), or 'smollm2' "
                        f"({default('--model', 'required')})")
    m.add_argument("--revision", default=None, help="hub revision (part of the run's key)")
    m.add_argument("--loader", default=None, metavar="MODULE:FUNCTION",
                   help="user loader for models outside transformers (e.g. MiniGPT-4); see docs/experiments.md")
    m.add_argument("--device", default="auto", help="auto (cuda:<LOCAL_RANK> when available), cpu, cuda:1, ...")
    m.add_argument("--dtype", default="auto", help="auto (float16 on GPU, float32 on CPU), float32, float16, bfloat16")
    m.add_argument("--device-map", default=None, help="transformers device_map (e.g. auto) for models over several GPUs")
    b = ap.add_argument_group("benchmark")
    b.add_argument("--benchmark", help=f"one of {', '.join(sorted(BENCHMARKS))} (or an entry-point plugin); "
                   + default("--benchmark", "required unless --protocol"))
    b.add_argument("--data", default=None, help="folder of the benchmark's official files")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="benchmark option (repeatable)")
    b.add_argument("--n", "--items", dest="n", type=int, default=None,
                   help=f"items ({default('--n', 'default: the whole benchmark; grounded: 100')}); under torchrun "
                        "write --items (torchrun reads --n as its own abbreviated option)")
    b.add_argument("--seed", type=int, default=0, help="seed of draws and bootstrap (default 0)")
    b.add_argument("--max-new-tokens", type=int, default=None, help="default: the benchmark's (CHAIR 512)")
    b.add_argument("--batch-size", type=batch_size_arg, default=1, help=f"items per generate call "
                   f"({default('--batch-size', 'default 1')}; 1 is padding-free, seconds per item comparable), or auto "
                   "(docs/experiments.md)")
    a = ap.add_argument_group("arms")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None, help="base config of smoothed / off / grid arms (default: the paper's)")
    src.add_argument("--config", default=None, help="base config file (.yaml/.json)")
    a.add_argument("--arms", default=None,
                   help="comma list of baseline, off, smoothed, preset names, config files "
                        f"({default('--arms', 'default baseline,smoothed; with a grid: baseline,off')})")
    a.add_argument("--method-set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="parameter of an inference-time method arm (vcd, pai, dola, middle-layer; repeatable), e.g. "
                        "vcd.alpha=0.5; sweep one with --grid sweep --axis vcd.alpha=0.5,1 (docs/methods.md)")
    a.add_argument("--grid", default=None, choices=sorted(GRIDS), help="add a grid of arms")
    a.add_argument("--grid-file", default=None, help="YAML/JSON file listing arms (see docs/experiments.md)")
    a.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2", help="sweep axis (repeatable)")
    a.add_argument("--window-size", type=int, default=4, help="layers grid: window size k (default 4)")
    a.add_argument("--stride", type=int, default=None, help="layers grid: window stride (default k/2)")
    a.add_argument("--single-step", type=int, default=1, help="layers grid: every n-th layer alone (default 1)")
    a.add_argument("--range-step", type=int, default=5, help="layers grid: prefix/suffix boundary step (default 5)")
    a.add_argument("--parts", default="single,window,prefix,suffix", help="layers grid parts")
    a.add_argument("--scorers", default=None, help="scorers grid: comma list (default all registered)")
    a.add_argument("--sites", default=",".join(site_names()),
                   help=f"scorers grid: sites (default all registered: {','.join(site_names())})")
    o = ap.add_argument_group("output")
    o.add_argument("--out", type=Path, default=Path("runs/run"),
                   help=f"output folder (resumable; {default('--out', 'default runs/run')})")
    o.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0 = no intervals)")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_paper_arguments(b, o)
    add_traceback_option(o)
    ap.set_defaults(**{"n" if flag in _ALIASES else flag[2:].replace("-", "_"): v for flag, v in defaults.items()})


def add_run_parser(subparsers) -> None:
    """Register ``kvsmooth run`` on the ``kvsmooth`` command's subparsers."""
    sp = subparsers.add_parser("run", help="run benchmarks x arms / grids on a model (resumable, data parallel)",
                               description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(sp)


def argv_after(argv: Sequence[str], command: str) -> list[str]:
    """The runner's own command line in ``kvsmooth [...] COMMAND OPTIONS``: what follows the first ``command`` word."""
    return list(argv)[list(argv).index(command) + 1:]


_ALIASES = {"--n": ("--n", "--items"), "--items": ("--n", "--items")}


def with_defaults(defaults: Sequence[str], argv: Sequence[str]) -> list[str]:
    """``defaults`` (``--flag value`` pairs) for the flags ``argv`` does not give, then ``argv`` (for scripts
    that are the runner with other defaults; the recorded command then shows each option once)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    out = []
    for flag, value in zip(defaults[::2], defaults[1::2]):
        if not given.intersection(_ALIASES.get(flag, (flag,))):
            out += [flag, value]
    return out + list(argv)


def _options(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set {p!r}: use KEY=VALUE")
        k, v = p.split("=", 1)
        if k.strip() in out:
            raise ConfigError(f"--set {k.strip()} is given twice; give it once")
        out[k.strip()] = v
    return out


def _check_numbers(args) -> None:
    """Counts that must be positive, refused before anything loads."""
    for flag, value, low in (("--n", args.n, 1), ("--batch-size", None if args.batch_size == "auto" else args.batch_size, 1),
                             ("--max-new-tokens", args.max_new_tokens, 1), ("--bootstrap", args.bootstrap, 0)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} {value}: must be at least {low}"
                              + (" (0 = no intervals)" if flag == "--bootstrap" else ""))
    if args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out}: is a file; give a folder (created when missing)")


def _arms(args, n_layers_of):
    from ..methods.arms import parse_method_sets
    from .arms import GRIDS, check_arm_names, grid_file_arms, parse_arms

    base = KVSmoothConfig.from_source(args.config, args.preset)
    grid = args.grid or args.grid_file
    args.method_sets = parse_method_sets(args.method_set)  # MethodError is a UserError: exit 2, one line
    arms = parse_arms(args.arms or ("baseline,off" if grid else "baseline,smoothed"), base, args.method_sets)
    if args.grid:
        arms += GRIDS[args.grid](base, n_layers_of(), args)
    if args.grid_file:
        arms += grid_file_arms(args.grid_file)
    return check_arm_names(arms)


def run(args, argv: Sequence[str] = ()) -> dict | None:
    """The whole run on this rank; rank 0 returns the results (also in ``<out>/results.json``)."""
    from tqdm.auto import tqdm

    from ..benchmarks import get_benchmark
    from .dist import shard, world_from_env
    from .engine import check_arms_select_layers, generate_records
    from .models import load_bundle, resolve_device_dtype
    from .paper import cpu_threads, paper_settings, prepare_bundle, protocol_and_template, save_trace
    from .store import CellStore, RunLock, guard

    world = world_from_env()
    _check_numbers(args)
    opts = _options(args.set)
    template = protocol_and_template(args, opts)
    bench = get_benchmark(args.benchmark)(args.data, **opts)
    gen = {"max_new_tokens": args.max_new_tokens or bench.max_new_tokens, "do_sample": False}
    items = bench.items(args.n, args.seed)  # inputs first: a wrong folder fails before a 7B model loads
    if not items:
        raise ConfigError(f"benchmark {bench.name!r} has no items in {args.data}")
    device, torch_dtype = resolve_device_dtype(args.device, args.dtype, world.local_rank)
    cpu_threads(device, world)
    settings = {"model": args.model, "revision": args.revision, "loader": args.loader, **bench.settings(), "n": args.n,
                "seed": args.seed, "generation": {**gen, "batch_size": args.batch_size, "dtype": str(torch_dtype)[6:]}}
    settings.update(paper_settings(args, template))
    out: Path = args.out
    bundle_box: list = []

    def bundle():
        if not bundle_box:
            b = load_bundle(args.model, args.device, args.dtype, args.loader, args.revision, args.device_map,
                            world.local_rank)
            if b.modality != bench.modality:
                raise ConfigError(f"benchmark {bench.name!r} needs a {bench.modality} model; {args.model!r} is a "
                                  f"{b.modality} model")
            prepare_bundle(b, template, args, gen, len(items), bench.modality)
            bundle_box.append(b)
        return bundle_box[0]

    def n_layers():
        from ..core.adapters import get_adapter

        return get_adapter(bundle().model).n_layers

    arms, checked = _arms(args, n_layers), []
    lock = RunLock(out) if world.main else contextlib.nullcontext()
    with lock:
        if world.main:
            guard(out / "run.json", settings, "a run")
        world.start()
        try:
            world.barrier()  # rank 0 has checked (or written) run.json
            if not world.main:
                guard(out / "run.json", settings, "a run")
            mine = shard(items, world.rank, world.size)
            stores = {a.name: CellStore(out, a.name, world.rank, world.size) for a in arms}
            for a in arms:
                if world.main:
                    stores[a.name].check(settings, a.settings())
            world.barrier()  # rank 0 has checked (or written) every cell.json; the other ranks check them now
            for a in arms:
                store = stores[a.name]
                if not world.main:
                    store.check(settings, a.settings())
                done = store.done()
                todo = [it for it in mine if it.id not in done]
                if not todo:
                    continue
                b = bundle()  # the model loads once, when there is work; every arm is checked against it once
                if not checked:
                    check_arms_select_layers(arms, b.model)
                    checked.append(True)
                bar = tqdm(total=len(mine), initial=len(mine) - len(todo),
                           desc=f"[rank {world.rank}/{world.size}] {a.name}", position=world.rank,
                           disable=args.no_progress, file=sys.stderr, leave=world.main)
                traced = args.trace and a.config is not None
                for records, session in generate_records(b, todo, a.config, gen, b.batch_size, trace=traced,
                                                         method=a.method, on_batch=store.append):
                    bar.update(len(records))
                    if traced and session is not None:  # the arm's first batch of this run
                        save_trace(session.trace, out / "cells" / a.name, world)
                        traced = False
                bar.close()
            world.barrier()  # every rank's records are written
            if not world.main:
                return None
            return _finish(args, argv, bench, arms, stores, items, settings, world, template,
                           bundle_box[0].info if bundle_box else {}, n_layers if args.grid == "layers" else None)
        finally:
            world.stop()


def _finish(args, argv, bench, arms, stores, items, settings, world, template, model_info, n_layers_fn):
    from . import report
    from .paper import chair_figure, run_record

    out: Path = args.out
    ids = [it.id for it in items]
    merged = {a.name: stores[a.name].merge(ids) for a in arms}  # records.jsonl of every arm, in item order
    rows = [report.summarize_arm(bench, a, merged[a.name], args.bootstrap, args.seed) for a in arms]
    md = report.write_tables(rows, bench.metrics, out)
    plots = report.write_plots(rows, bench, out, n_layers_fn() if n_layers_fn else None)
    if "CHAIR_S" in bench.metrics:
        plots.append(chair_figure(bench, merged, out))
    cmd = report.command_line(argv, world.size)
    (out / "command.txt").write_text(cmd + "\n", encoding="utf-8")
    machine = report.machine_info(world.size)
    report.write_json(out / "machine.json", machine)
    record = run_record(args, bench, settings, ids, model_info, template)
    results = {"settings": settings, "model_info": model_info, "arms": rows, "command": cmd, "machine": machine,
               "plots": [p.name for p in plots], "protocol_record": record}
    report.write_json(out / "results.json", results)
    print(md)
    print(f"results: {out}/results.md, results.csv, results.json, cells/<arm>/records.jsonl"
          + (f", {', '.join(p.name for p in plots)}" if plots else ""))
    print(f"reproduce with: {cmd}")
    return results


def main(argv: Sequence[str] | None = None, prog: str = "python -m kvsmooth_hooks.run") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(prog).parse_args(argv)
    return run_cli(args, argv)


def run_cli(args, argv) -> int:
    """Run under the package's error policy (:func:`~kvsmooth_hooks.core.errors.run_command`): user mistakes
    print ``error: ...`` and exit 2, unexpected errors ask to be reported."""
    from ..core.errors import run_command

    def body() -> int:
        run(args, argv)
        return 0

    return run_command(body, getattr(args, "traceback", False))
