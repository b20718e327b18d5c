"""The architecture sweep: :func:`~kvsmooth_hooks.check.check_model` (the checks of ``kvsmooth check``) on a tiny
random model of every generative class of the installed transformers (:mod:`kvsmooth_hooks.tiny_configs`).
Run by ``experiments/arch_sweep.py`` (results and the docs table) and ``tests/test_sweep.py``."""

from __future__ import annotations

import time
import warnings

from .check import SITES, check_model

def sweep_one(name: str, reference: bool = True) -> dict:
    """:func:`check_model` on a tiny random model of the transformers class ``name`` (``tiny_configs``), as a record."""
    from .tiny_configs import build

    t0 = time.time()
    rec: dict = {"class": name}
    try:
        model = build(name)
    except Exception as exc:  # noqa: BLE001
        return {**rec, "status": "harness", "detail": f"{type(exc).__name__}: {str(exc)[:300]}",
                "seconds": round(time.time() - t0, 2)}
    report = check_model(model, name, reference=reference)
    if report.error is not None:
        return {**rec, "status": "harness", "detail": report.error, "seconds": round(time.time() - t0, 2)}
    rec.update({k: v for k, v in report.structure.items() if k not in ("n_heads",)})
    rec.update(report.sites)
    if report.reference is not None:
        rec["reference"] = report.reference
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


def run(names, timeout: int = 120, log=print, reference: bool = True) -> list[dict]:
    """:func:`sweep_one` over ``names`` with a per-class time limit."""
    import signal

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
                    rec = sweep_one(name, reference)
            except TimeoutError as exc:
                rec = {"class": name, "status": "harness", "detail": f"timeout: {exc}"}
            finally:
                signal.alarm(0)
            results.append(rec)
            log(f"{name}: " + " ".join(f"{s}={rec[s]['status']}" for s in SITES if s in rec)
                + (f" reference={rec['reference']['status']}" if "reference" in rec else "")
                + (f" {rec.get('status', '')} {rec.get('detail', '')[:120]}" if "status" in rec else ""))
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
    refs = [r["reference"]["status"] for r in results if "reference" in r]
    out["reference"] = {s: refs.count(s) for s in ("ok", "fail", "skip")}
    return out
