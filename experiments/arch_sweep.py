"""Sweep every generative model class of the installed transformers through ``smooth(model, cfg)``.

For each class (a tiny random model from ``tests/tiny_configs.py``, no downloads) and each site:

* lambda 0 (clip 0) must give bit-identical logits to the unhooked model over a short greedy generation;
* lambda_ref 0.9 must change the logits;
* no hook, session marker or attention implementation may remain afterwards;
* otherwise the library must refuse with :class:`UnsupportedModelError` / ``SessionError`` / ``PlanError``
  (a *refusal*, recorded with its message); any other exception is a *crash*.

Classes the harness itself cannot build or run (config constraints, missing optional packages,
inputs the harness cannot make) are recorded as ``harness`` with the reason; they say nothing about
the library.

Usage::

    python experiments/arch_sweep.py --out docs/results/arch_sweep/results.json --docs docs/adapters.md
    python experiments/arch_sweep.py --only LlamaForCausalLM,T5ForConditionalGeneration
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # tiny_configs: the test suite's tiny models
sys.path.insert(0, str(Path(__file__).parent.parent))  # this checkout's kvsmooth_hooks before an installed one

from tiny_configs import build, generative_classes  # noqa: E402

SITES = ("cache", "kv_proj")
NEW_TOKENS = 5
#: scorer used when the default (row_entropy) is refused for reading attention rows
FALLBACK_SCORER = "key_similarity"


class HarnessError(RuntimeError):
    """The harness could not build or run the unhooked model (not a statement about kvsmooth_hooks)."""


def _special_ids(cfg) -> set[int]:
    ids = set()
    for c in [cfg] + [getattr(cfg, n) for n in dir(cfg) if n.endswith("_config") and hasattr(getattr(cfg, n, None), "to_dict")]:
        for k, v in c.to_dict().items() if hasattr(c, "to_dict") else []:
            if (k.endswith("_token_id") or k.endswith("_token_index") or k.endswith("_id")) and isinstance(v, int):
                ids.add(v)
    return ids


def make_inputs(model, batch: int = 1, length: int = 8, seed: int = 1) -> list[dict]:
    """Candidate inputs, tried in order until the unhooked model generates: text prompts (random ids that are not
    special tokens); audio features in both layouts; images (with the image tokens a wrapper expects)."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    special = _special_ids(cfg)
    pool = torch.tensor([i for i in range(4, 100) if i not in special])
    ids = pool[torch.randint(len(pool), (batch, length), generator=g)]
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_features":
        enc = getattr(cfg, "encoder_config", None) or getattr(cfg, "audio_config", None) or cfg
        mels = getattr(enc, "num_mel_bins", None) or getattr(enc, "feature_size", None) or getattr(enc, "input_feat_per_channel", None) or 80
        frames = 2 * (getattr(enc, "max_source_positions", None) or 32)
        return [{"input_features": torch.randn(batch, mels, frames, generator=g)},
                {"input_features": torch.randn(batch, frames, mels, generator=g)}]
    if main == "input_values":
        return [{"input_values": torch.randn(batch, 16000, generator=g)}, text]
    vc = getattr(cfg, "vision_config", None) or getattr(cfg, "encoder", None)
    size = getattr(vc, "image_size", None)
    size = size[0] if isinstance(size, (list, tuple)) else size
    out = [text]
    if isinstance(size, int):
        pix = torch.randn(batch, getattr(vc, "num_channels", 3), size, size, generator=g)
        if main == "pixel_values" and getattr(cfg, "text_config", None) is None:
            return [{"pixel_values": pix}, text]
        tok = getattr(cfg, "image_token_index", None) or getattr(cfg, "image_token_id", None)
        nq = getattr(cfg, "num_query_tokens", None)
        if isinstance(tok, int) and isinstance(nq, int):  # BLIP-2 / InstructBLIP: one image token per query token
            ids_img = torch.cat([torch.full((batch, nq), tok), ids], 1)
            img = {"input_ids": ids_img, "attention_mask": torch.ones_like(ids_img), "pixel_values": pix}
            if getattr(cfg, "qformer_config", None) is not None:  # InstructBLIP: the Q-Former reads the prompt too
                img = {**img, "qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}
            out.append(img)
        tok = tok if isinstance(tok, int) else getattr(cfg, "video_token_index", None)
        if isinstance(tok, int) and isinstance(nq, int) and len(out) == 1:
            ids_img = torch.cat([torch.full((batch, nq), tok), ids], 1)
            out.append({"input_ids": ids_img, "attention_mask": torch.ones_like(ids_img), "pixel_values": pix[:, :, None]})
        out.append({**text, "pixel_values": pix})
        out.append({**text, "pixel_values": pix[:, None]})  # [B, images, C, H, W] (IDEFICS)
    return out


def _generate(model, inputs: dict):
    out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         num_beams=1, output_logits=True, return_dict_in_generate=True)
    return torch.stack([l.float() for l in out.logits], 1)


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _attn_impls(model) -> list:
    return [getattr(m.config, "_attn_implementation_internal", None) for m in model.modules() if hasattr(m, "config")
            and hasattr(m.config, "_attn_implementation_internal")]


def check_site(model, inputs, base, site: str, scorer: str | None = None) -> dict:
    """One site on one model: ``{"status": ok|refused|fail|crash, "detail": ...}``."""
    from kvsmooth_hooks import KVSmoothConfig, PlanError, SessionError, UnsupportedModelError, smooth

    extra = {"scorer": scorer} if scorer else {}
    hooks, impls = _hook_count(model), _attn_impls(model)
    try:
        with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.0, clip=0.0, **extra), trace=False):
            zero = _generate(model, inputs)
        with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.9, **extra), trace=False):
            smoothed = _generate(model, inputs)
        try:  # keys alone must reach the attention too (a late key edit would leave them unsmoothed)
            with smooth(model, KVSmoothConfig(layers="all", site=site, lambda_ref=0.9, targets=["key"], **extra),
                        trace=False):
                keys_only = _generate(model, inputs)
        except (UnsupportedModelError, PlanError):  # keys and values smoothed together only (MLA latents)
            keys_only = None
    except (UnsupportedModelError, SessionError, PlanError) as exc:
        return {"status": "refused", "detail": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - recorded as a crash
        return {"status": "crash", "detail": f"{type(exc).__name__}: {str(exc)[:400]}"}
    finally:
        left = _hook_count(model) - hooks
        marker = getattr(model, "_kvsmooth_session", None) is not None
        restored = _attn_impls(model) == impls
    if left or marker or not restored:
        return {"status": "fail", "detail": f"left behind: {left} hooks, session marker {marker}, "
                                            f"attention implementation restored {restored}"}
    if not torch.equal(zero, base):
        return {"status": "fail", "detail": f"lambda 0 changed the logits (max diff {(zero - base).abs().max():.3g})"}
    diff = float((smoothed - base).abs().max())
    if not diff > 0:
        return {"status": "fail", "detail": "lambda 0.9 left the logits unchanged"}
    note = "" if keys_only is not None else "; keys only: refused (keys with values)"
    if keys_only is not None and not float((keys_only - base).abs().max()) > 0:
        if not _zero_keys(model, inputs):
            return {"status": "fail", "detail": "lambda 0.9 on the keys alone left the logits unchanged"}
        note = "; keys only: no change, this random model's cached keys are all zero"
    return {"status": "ok", "detail": f"max logit change {diff:.3g}" + note}


def _zero_keys(model, inputs) -> bool:
    """Whether every cached key of the model is exactly zero for ``inputs``: a random init can zero them (Zaya's
    learned key scale starts at 0), and smoothing zero keys changes nothing."""
    from kvsmooth_hooks.core.adapters.cache_access import self_attention_part

    try:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
        cache = self_attention_part(getattr(out, "past_key_values", None))
        keys = [l.keys for l in getattr(cache, "layers", []) if isinstance(getattr(l, "keys", None), torch.Tensor)]
        return bool(keys) and all(not bool(k.any()) for k in keys)
    except Exception:  # noqa: BLE001 - unknown: not degenerate
        return False


def sweep_one(name: str, sites=SITES) -> dict:
    """Build ``name``, run the unhooked baseline, then both sites (with the fallback scorer where rows are refused)."""
    from kvsmooth_hooks import get_adapter

    t0 = time.time()
    rec: dict = {"class": name}
    try:
        model = build(name)
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = 0
        model.generation_config.forced_eos_token_id = None
        if getattr(model.config, "is_encoder_decoder", False) and model.generation_config.decoder_start_token_id is None:
            model.generation_config.decoder_start_token_id = 0
        langs = getattr(model.config, "languages", None)
        if hasattr(model, "set_default_language") and langs:  # X-MOD: one adapter per language
            model.set_default_language(langs[0])
        if model.generation_config.bos_token_id is None:
            model.generation_config.bos_token_id = 1
        errors = []
        for inputs in make_inputs(model):
            try:
                base = _generate(model, inputs)
                break
            except Exception as exc:  # noqa: BLE001 - next candidate
                errors.append(exc)
        else:
            raise errors[0]
    except Exception as exc:  # noqa: BLE001
        rec.update(status="harness", detail=f"{type(exc).__name__}: {str(exc)[:300]}", seconds=round(time.time() - t0, 2))
        return rec
    rec["model_type"] = getattr(getattr(model.config, "text_config", None) or model.config, "model_type", "")
    try:
        ad = get_adapter(model)
        rec["adapter"] = ad.name
        s = getattr(ad, "structure", None)
        if s is not None:
            rec["decoder"] = s.path or "(model)"
            rec["layer_kinds"] = sorted({l.kind for l in s.layers})
            rec["layers"] = len(s.layers)
            rec["attention_layers"] = len(s.attention_layers())
    except Exception as exc:  # noqa: BLE001 - the per-site checks record the error
        rec["adapter_error"] = f"{type(exc).__name__}: {exc}"
    try:
        first = ad.smoothable_layers()[0]
        rec["kv_proj_ops"] = 1 if ad.key_slot(first).module is ad.value_slot(first).module or \
            ad.key_blend_waits(first) else 2  # blend ops per layer and step at kv_proj (sites/kv_proj.py)
    except Exception:  # noqa: BLE001 - no kv_proj slots: the kv_proj check records the refusal
        pass
    for site in sites:
        r = check_site(model, inputs, base, site)
        if r["status"] == "refused" and "reads no row" in r["detail"]:
            alt = check_site(model, inputs, base, site, FALLBACK_SCORER)
            r = {**alt, "row_scorer_refused": True, "row_refusal": r["detail"]} if alt["status"] == "ok" else \
                {**r, "fallback": alt}
        rec[site] = r
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def run(names, timeout: int = 120, log=print) -> list[dict]:
    def alarm(*_):
        raise TimeoutError(f"more than {timeout} s")

    old = signal.signal(signal.SIGALRM, alarm)
    results = []
    try:
        for name in names:
            signal.alarm(timeout)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rec = sweep_one(name)
            except TimeoutError as exc:
                rec = {"class": name, "status": "harness", "detail": f"timeout: {exc}"}
            finally:
                signal.alarm(0)
            results.append(rec)
            log(f"{name}: " + " ".join(f"{s}={rec[s]['status']}" for s in SITES if s in rec) + (
                f" {rec.get('status', '')} {rec.get('detail', '')[:120]}" if "status" in rec else ""))
    finally:
        signal.signal(signal.SIGALRM, old)
    return results


def summary(results: list[dict]) -> dict:
    out = {"classes": len(results), "harness": sum(r.get("status") == "harness" for r in results)}
    for site in SITES:
        sts = [r[site]["status"] for r in results if site in r]
        out[site] = {s: sts.count(s) for s in ("ok", "refused", "fail", "crash")}
    out["ok_both"] = sum(all(r.get(s, {}).get("status") == "ok" for s in SITES) for r in results)
    out["kv_proj_one_op"] = sum(r.get("kv_proj", {}).get("status") == "ok" and r.get("kv_proj_ops") == 1 for r in results)
    return out


def markdown_table(results: list[dict]) -> str:
    """The supported-architecture table for docs/adapters.md."""
    import transformers

    s = summary(results)
    lines = [
        f"Generated by `python experiments/arch_sweep.py` on transformers {transformers.__version__}: "
        f"{s['classes']} generative classes, **{s['ok_both']} work on both sites** "
        f"(cache: {s['cache']['ok']}, kv_proj: {s['kv_proj']['ok']}); refusals and harness limits are listed with "
        "their reason. *works* = λ=0 bit-identical logits, λ=0.9 changes them, and so does λ=0.9 on the keys alone, "
        "no hook left. kv_proj *(1 op)*: a layer's key and value are blended in one fused op per decode step (fused "
        f"QKV, or the key's blend waits for the value hook: {s.get('kv_proj_one_op', 0)} classes); *(2 ops)*: the "
        "attention reads its key projection before the value projection runs, so each is blended in its own hook. "
        f"`(rows: {FALLBACK_SCORER})` = the default row scorer is refused (attention computed inline, outside "
        f"transformers' attention interface), `{FALLBACK_SCORER}` works (Falcon: row scorers work with "
        "`attn_implementation='eager'`). *layers (attention)*: entries of the decoder's layer list (those with their "
        "own self-attention cache). *harness*: the sweep could not build or run the unhooked tiny model (a limit of "
        "the harness's generated configs and inputs, not a result about kvsmooth_hooks).",
        "",
        "| class | model type | decoder | layers (attention) | cache | kv_proj |",
        "|---|---|---|---|---|---|",
    ]

    def cell(r):
        if r["status"] == "ok":
            return "works" + (f" (rows: {FALLBACK_SCORER})" if r.get("row_scorer_refused") else "")
        text = f"{r['status']}: {r['detail'][:200]}"
        if "fallback" in r:
            text += f"; with {FALLBACK_SCORER}: {r['fallback']['status']}: {r['fallback']['detail'][:160]}"
        return text.replace("|", "/").replace("\n", " ")

    for r in sorted(results, key=lambda r: r["class"]):
        if r.get("status") == "harness":
            lines.append(f"| {r['class']} | | | | harness: {r['detail'][:160].replace('|', '/')} | |".replace("\n", " "))
            continue
        kinds = ", ".join(k for k in r.get("layer_kinds", []) if k != "attention")
        layers = f"{r['layers']} ({r['attention_layers']})" + (f"; also {kinds}" if kinds else "") if "layers" in r else "—"
        decoder = f"`{r['decoder']}`" if r.get("decoder") else "—"
        ops = f" ({r['kv_proj_ops']} op{'s' if r['kv_proj_ops'] > 1 else ''})" \
            if r["kv_proj"]["status"] == "ok" and "kv_proj_ops" in r else ""
        lines.append(f"| {r['class']} | {r.get('model_type', '')} | {decoder} | {layers} | "
                     f"{cell(r['cache'])} | {cell(r['kv_proj'])}{ops} |")
    return "\n".join(lines)


BEGIN, END = "<!-- arch-sweep:begin -->", "<!-- arch-sweep:end -->"


def write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + BEGIN + "\n" + table + "\n" + END + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Every generative class (sweep)\n\n" + BEGIN + "\n" + table + "\n" + END + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated class names (default: every generative class)")
    ap.add_argument("--out", type=Path, help="results JSON")
    ap.add_argument("--docs", type=Path, help="markdown file whose sweep table to regenerate (docs/adapters.md)")
    ap.add_argument("--from-json", type=Path, help="regenerate the docs table from a results JSON, no run")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per class")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.from_json:
        results = json.loads(args.from_json.read_text())["results"]
    else:
        names = args.only.split(",") if args.only else generative_classes()
        t0 = time.time()
        results = run(names, args.timeout, log=lambda m: print(m, flush=True))
        print(f"{len(names)} classes in {time.time() - t0:.0f} s")
    s = summary(results)
    print(json.dumps(s, indent=1))
    if args.out:
        import transformers

        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"transformers": transformers.__version__, "summary": s, "results": results},
                                       indent=1))
    if args.docs:
        write_docs(args.docs, markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
