"""Command lines and outputs of the runner as its tests use them (tests/runner/, tests/test_error_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path


def vlm_argv(data: dict, out: Path, model: str = "tiny-llava", benchmark: str | None = "chair", *extra: str,
             loader: str = "tiny_vlms:load_tiny_vlm", bootstrap: int = 30) -> list[str]:
    """``kvsmooth run`` on a tiny VLM over the synthetic official files ``data`` (tests/runner/conftest.py);
    ``benchmark=None`` leaves ``--benchmark`` to a protocol (the COCO files are given)."""
    d = {"chair": data["coco"], "pope": data["coco"], "opope": data["coco"], "objhal": data["coco"],
         "amber": data["amber"], "grounded": None, None: data["coco"]}[benchmark]
    return ["--model", model, "--loader", loader, *(["--benchmark", benchmark] if benchmark else []),
            *(["--data", str(d)] if d else []), "--config", str(data["cfg"]), "--max-new-tokens", "5",
            "--bootstrap", str(bootstrap), "--no-progress", "--out", str(out), *extra]


def text_argv(tmp_path: Path, out: Path, *extra: str, layers: str = "1:-1") -> list[str]:
    """``kvsmooth run`` of the grounded proxy on the tiny text model, 2 items, 3 new tokens, with a config
    ``tmp_path/base.yaml`` smoothing ``layers`` (written unless the test wrote its own)."""
    cfg = tmp_path / "base.yaml"
    if not cfg.exists():
        cfg.write_text(f'layers: "{layers}"\n')
    return ["--model", "tiny-text", "--loader", "tiny_vlms:load_tiny_text", "--benchmark", "grounded", "--n", "2",
            "--config", str(cfg), "--max-new-tokens", "3", "--bootstrap", "0", "--no-progress", "--out", str(out),
            *extra]


def records(out: Path, arm: str) -> list[dict]:
    """The merged records of one arm, in item order."""
    return [json.loads(l) for l in (out / "cells" / arm / "records.jsonl").read_text().splitlines()]


def rows(out: Path) -> dict[str, dict]:
    """``results.json``'s rows by arm name."""
    return {r["arm"]: r for r in json.loads((out / "results.json").read_text())["arms"]}
