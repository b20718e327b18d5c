"""The runner's side of the paper's protocol (issue 23): ``--protocol`` / ``--template`` resolution, CPU threads per
process, ``--batch-size auto``, per-cell traces and the figures a CHAIR-type run writes. Used by :mod:`.cli`."""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.config import ConfigError

__all__ = ["batch_size_arg", "paper_settings", "add_arguments", "protocol_and_template", "cpu_threads", "prepare_bundle", "resolve_batch_size",
           "save_trace", "metric_rule", "run_record", "chair_figure"]


def batch_size_arg(text: str):
    """``--batch-size``: a number, or ``auto`` (resolved per process once the model is loaded)."""
    import argparse

    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of items or auto") from None


def paper_settings(args, template) -> dict:
    """What the run's key (``run.json``) gains, only when asked, so earlier run folders stay valid."""
    out = {}
    if template is not None:
        out["template"] = template.record()
    if args.protocol:
        out["protocol"] = args.protocol
    return out


def add_arguments(bench_group, out_group) -> None:
    """``--protocol``, ``--template`` (benchmark group) and ``--trace`` (output group)."""
    bench_group.add_argument("--protocol", default=None, metavar="NAME",
                             help="a published protocol in one word (kvsmooth-chair: CHAIR, 500 images, seed 0, greedy, "
                                  "512 tokens, the family's preset and OPERA template); options given explicitly win")
    bench_group.add_argument("--template", default=None, metavar="NAME|STRING",
                             help="prompt template: a name of kvsmooth_hooks/data/templates.json (opera-llava-1.5, "
                                  "llava-vicuna_v1, chat, ...) or a string with {question} and {image}; also "
                                  "--set template=NAME")
    out_group.add_argument("--trace", action="store_true",
                           help="keep each smoothed arm's trace of its first batch: cells/<arm>/trace.safetensors and "
                                "per-cell heatmaps trace_lambda.png / trace_score.png (layer x decode step)")


def prepare_bundle(b, template, args, gen: dict, n_items: int, modality: str) -> None:
    """Give a loaded bundle the template (refused for a bundle that cannot apply it) and its batch size."""
    if template is not None:
        if not b.accepts_template:
            raise ConfigError(f"--template {template.name!r}: the model bundle of --loader {args.loader!r} does not "
                              "apply prompt templates; read bundle.prompt_template in its generate and return "
                              "ModelBundle(..., accepts_template=True), or leave out --template")
        b.prompt_template = template
        b.info = {**b.info, "prompt_format": f"template {template.name}"}
    b.batch_size = resolve_batch_size(args.batch_size, b, gen, n_items, modality)
    b.info = {**b.info, "batch_size": b.batch_size}


def run_record(args, bench, settings: dict, ids: list, model_info: dict, template=None) -> dict:
    """``results.json["protocol_record"]`` (:func:`kvsmooth_hooks.protocols.protocol_record`); ``template``: the run's
    :class:`~kvsmooth_hooks.templates.PromptTemplate` (None: the model's own format)."""
    from ..protocols import protocol_record

    used = model_info.get("batch_size", args.batch_size)
    return protocol_record(template=template,
                           question=getattr(bench, "opts", {}).get("prompt"), ids=ids,
                           decoding={**settings["generation"], "batch_size_used": used},
                           seeds={"items": args.seed, "bootstrap": args.seed}, metric_rule=metric_rule(bench),
                           protocol=args.protocol)


def protocol_and_template(args, opts: dict):
    """``--protocol``: fill every option the command line left out (benchmark, items, tokens, arms, template, the
    benchmark's question); ``--template`` / ``--set template=``: the prompt template. Returns it (or None)."""
    from ..templates import get_template

    family = opts.pop("family", None)
    spec = opts.pop("template", None)
    if spec is not None and args.template is not None and spec != args.template:
        raise ConfigError(f"--template {args.template!r} and --set template={spec} disagree; give one")
    args.template = args.template or spec
    if args.protocol:
        from ..protocols import resolve_protocol

        p = resolve_protocol(args.protocol, args.model, family=family)
        if args.benchmark not in (None, p["benchmark"]):
            raise ConfigError(f"--protocol {args.protocol} runs benchmark {p['benchmark']!r}, not {args.benchmark!r}")
        args.benchmark = p["benchmark"]
        args.n = args.n if args.n is not None else p["n"]
        args.max_new_tokens = args.max_new_tokens or p["max_new_tokens"]
        if args.arms is None and not (args.grid or args.grid_file):
            if p["preset"] is None:
                raise ConfigError(f"--protocol {args.protocol}: the model family {p['family']!r} has no smoothing preset "
                                  "in the protocol; give --arms (e.g. --arms baseline,smoothed with --preset or "
                                  "--config for the smoothed arm)")
            args.arms = f"baseline,{p['preset']}"
        args.template = args.template or p["template"]
        if args.template == p["template"] and p["question"]:
            opts.setdefault("prompt", p["question"])  # the harness's question with the harness's template
    elif family is not None:
        raise ConfigError("--set family= names the model family for --protocol; give --protocol too")
    if args.benchmark is None:
        raise ConfigError("--benchmark is required (or --protocol NAME)")
    return get_template(args.template) if args.template is not None else None


def cpu_threads(device, world) -> None:
    """Several CPU processes on one node: split the cores (unless OMP_NUM_THREADS is set), so N processes do not
    each start a thread per core."""
    import os

    import torch

    from ..protocols import cpu_threads_per_process

    if world.size > 1 and str(device) == "cpu":
        n = cpu_threads_per_process(int(os.environ.get("LOCAL_WORLD_SIZE", world.size)))
        if n:
            torch.set_num_threads(n)


def resolve_batch_size(value, b, gen: dict, n_items: int, modality: str) -> int:
    """``--batch-size auto`` (see :func:`kvsmooth_hooks.protocols.auto_batch_size`), else the number given."""
    if value != "auto":
        return value
    import torch

    from ..protocols import auto_batch_size

    p = next(b.model.parameters())
    kv = free = None
    if p.device.type == "cuda":
        cfg = b.model.config.get_text_config() if hasattr(b.model.config, "get_text_config") else b.model.config
        heads = cfg.num_attention_heads
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        kvh = getattr(cfg, "num_key_value_heads", None) or heads
        prompt = 700 if modality == "image" else 256  # LLaVA-1.5: 576 image tokens + text
        kv = 2 * cfg.num_hidden_layers * kvh * hd * (prompt + gen["max_new_tokens"]) * p.element_size()
        free = torch.cuda.mem_get_info(p.device)[0]
    return auto_batch_size(n_items, str(p.device), kv, free)


def save_trace(trace, folder: Path, world) -> None:
    """``trace[.rankR].safetensors`` and its per-cell heatmaps in the arm's folder."""
    from ..figures import trace_heatmaps

    folder.mkdir(parents=True, exist_ok=True)
    stem = "trace" if world.size == 1 else f"trace.rank{world.rank}"
    trace.save(folder / f"{stem}.safetensors")
    if trace.runs and trace.runs[-1].n_steps:
        trace_heatmaps(trace, folder, prefix=stem)


def metric_rule(bench) -> str:
    """The benchmark's ``metric_rule``, else the first paragraph of its class's (or module's) docstring, else its
    name."""
    if bench.metric_rule:
        return bench.metric_rule
    doc = (type(bench).__doc__ or sys.modules[type(bench).__module__].__doc__ or "").strip()
    return doc.split("\n\n")[0].replace("\n", " ") if doc else bench.name


def chair_figure(bench, records: dict[str, list[dict]], out: Path) -> Path:
    """``chair_vs_length.png``: each record scored alone (CHAIR_S 0 or 100) against its length in words.
    ``records``: ``{arm name: the arm's merged records}`` (as ``_finish`` of :mod:`.cli` merged them), arms in order."""
    from ..figures import chair_vs_length

    items = []
    for arm, recs in records.items():
        for r in recs:
            s = bench.score([r], n_bootstrap=0, seed=0)
            items.append({"arm": arm, "length": len(str(r["output"]).split()), "hallucinated": s.get("CHAIR_S", 0) > 0})
    return chair_vs_length(items, out / "chair_vs_length.png", title=f"{bench.name}: CHAIR_S vs caption length")
