"""What a session did: per run (generate call), decode step, sequence, layer and KV head.

Tensors per run are ``[S, B, La, H]`` (S decode steps, B sequences, La active layers, H KV
heads): ``score`` (the unit's score, repeated over the heads of a unit), ``rank`` (its window
rank or linear position), ``lambda`` (the coefficient applied to each head; 0 where a head is
disabled), and optionally ``dk`` / ``dv`` (L2 norm of the change made to each head's key/value).
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

FIELDS = ("score", "rank", "lambda", "dk", "dv")


#: metadata every saved trace carries (see ``Trace._meta``)
META_KEYS = ("format", "config", "layers", "n_kv_heads", "identity", "runs", "notes")


@dataclass
class TraceRun:
    """One generate call (one batch of sequences)."""

    batch: int
    prompt_len: int
    steps: dict[str, list[torch.Tensor]] = field(default_factory=lambda: {f: [] for f in FIELDS})
    #: beam reorders, ``(steps recorded before it, beam_idx [B])``; applied when the run is read (linear cost)
    reorders: list[tuple[int, torch.Tensor]] = field(default_factory=list)

    def tensor(self, name: str) -> torch.Tensor:
        """``[S, B, La, H]`` float32 on CPU (empty ``[0, B, La, H]`` if no step was recorded); each step's
        rows follow the beams that survived to the end of the run."""
        rows = self.steps[name]
        if not rows:
            return torch.empty(0)
        out = [r.detach().to("cpu", torch.float32) for r in rows]
        pending, idx = list(self.reorders), None
        for s in range(len(out) - 1, -1, -1):  # compose the reorders that came after step s, latest first
            while pending and pending[-1][0] > s:
                b = pending.pop()[1].cpu()
                idx = b if idx is None else b[idx]
            if idx is not None:
                out[s] = out[s].index_select(0, idx)
        return torch.stack(out)

    @property
    def n_steps(self) -> int:
        return len(self.steps["lambda"])


class Trace:
    """Recorded scores and coefficients of a session (``session.trace``)."""

    def __init__(self, layers: list[int], n_kv_heads: int, config=None, identity: dict | None = None, notes=None,
                 max_runs: int | None = None, warn_dropped: bool = False):
        """``max_runs``: keep only the latest ``max_runs`` runs (long-lived sessions); None keeps all.
        ``warn_dropped``: warn once when the first run is dropped (the bound was not chosen by the user)."""
        if max_runs is not None and (isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1):
            raise ValueError(f"trace_runs must be a positive int or None (keep every run), got {max_runs!r}")
        self.max_runs, self.warn_dropped = max_runs, warn_dropped
        self.layers = list(layers)
        self.n_kv_heads = n_kv_heads
        self.config = config
        self.identity = identity or {}
        self.notes = notes or {}
        self.runs: list[TraceRun] = []

    # ------------------------------------------------------------------ recording
    def begin_run(self, batch: int, prompt_len: int) -> None:
        self.runs.append(TraceRun(batch, prompt_len))
        if self.max_runs is not None and len(self.runs) > self.max_runs:
            del self.runs[: len(self.runs) - self.max_runs]
            if self.warn_dropped:
                self.warn_dropped = False
                warnings.warn(f"kvsmooth: the session's trace keeps the latest {self.max_runs} runs (generate calls) by "
                              "default, and older runs are dropped from now on: pass trace_runs=N to choose the bound "
                              "(None keeps every run), or trace=False where nothing reads the trace (a server)",
                              stacklevel=2)

    def record(self, **tensors: torch.Tensor | None) -> None:
        """Append one decode step; each tensor ``[B, La, H]``."""
        if not self.runs:
            return
        run = self.runs[-1]
        for name, value in tensors.items():
            if value is not None:
                run.steps[name].append(value)

    def reorder(self, beam_idx: torch.Tensor) -> None:
        """Follow a beam-search reorder: earlier steps of the current run take the surviving beams' history
        (remembered in O(1); applied once when the run is read)."""
        if self.runs:
            run = self.runs[-1]
            run.reorders.append((run.n_steps, beam_idx.detach()))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.runs)

    def tensor(self, name: str = "lambda", run: int = -1) -> torch.Tensor:
        """``[S, B, La, H]`` for one run (default: the latest)."""
        if not self.runs:
            raise IndexError("the trace is empty: no generate call ran inside the session")
        return self.runs[run].tensor(name)

    def summary(self, run: int = -1) -> list[dict]:
        """Per active layer: mean score, mean/min/max lambda and the share of steps at each clip bound."""
        lam, score = self.tensor("lambda", run), self.tensor("score", run)
        out = []
        if lam.numel() == 0:
            return out
        for j, layer in enumerate(self.layers):
            lj, sj = lam[:, :, j], score[:, :, j]
            out.append(
                {
                    "layer": layer,
                    "score_mean": float(sj.mean()),
                    "lambda_mean": float(lj.mean()),
                    "lambda_min": float(lj.min()),
                    "lambda_max": float(lj.max()),
                }
            )
        return out

    # ------------------------------------------------------------------ export
    def _meta(self) -> dict[str, str]:
        return {
            "format": "kvsmooth_hooks.core.trace/1",
            "config": self.config.to_json() if self.config is not None else "null",
            "identity": json.dumps(self.identity, sort_keys=True),
            "layers": json.dumps(self.layers),
            "n_kv_heads": str(self.n_kv_heads),
            "runs": json.dumps([{"batch": r.batch, "prompt_len": r.prompt_len} for r in self.runs]),
            "notes": json.dumps(self.notes, sort_keys=True),
        }

    def save(self, path: str | Path) -> Path:
        """safetensors: ``run{i}.{field}`` tensors ``[S, B, La, H]`` plus config/identity metadata."""
        from safetensors.torch import save_file

        tensors = {}
        for i, run in enumerate(self.runs):
            for name in FIELDS:
                if run.steps[name]:
                    tensors[f"run{i}.{name}"] = run.tensor(name).contiguous()
        if not tensors:
            tensors["empty"] = torch.zeros(0)
        save_file(tensors, str(path), metadata=self._meta())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Trace":
        """The trace saved at ``path`` (:meth:`save`). A file that is missing, not safetensors, not a trace or
        without its metadata raises :class:`~kvsmooth_hooks.core.errors.UserError` naming the file and the fix."""
        from safetensors import SafetensorError, safe_open

        from .config import KVSmoothConfig
        from .errors import UserError

        path = Path(path)
        if not path.is_file():
            raise UserError(f"trace file '{path}' does not exist" + (" (it is a directory)" if path.is_dir() else ""))
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != "kvsmooth_hooks.core.trace/1":
                    raise UserError(f"'{path}' is a safetensors file but not a kvsmooth_hooks trace (metadata format="
                                    f"{meta.get('format')!r}); traces come from `session.trace.save(...)`")
                data = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError) as exc:
            raise UserError(f"'{path}' is not a safetensors file ({exc}); give a trace written by "
                            "`session.trace.save(...)` or `kvsmooth demo --save-trace FILE`") from None
        missing = [k for k in META_KEYS if k not in meta]
        if missing:
            raise UserError(f"trace '{path}' lacks its {', '.join(missing)} metadata (the config, layers and clip band "
                            "a trace needs); it was not written by Trace.save or was edited: save it again")
        try:
            cfg, runs = json.loads(meta["config"]), json.loads(meta["runs"])
            trace = cls(json.loads(meta["layers"]), int(meta["n_kv_heads"]),
                        KVSmoothConfig.from_dict(cfg) if cfg is not None else None, json.loads(meta["identity"]),
                        json.loads(meta.get("notes", "{}")))
        except (ValueError, TypeError) as exc:  # JSON or numbers of an edited file (a bad config names its field)
            raise UserError(f"trace '{path}': damaged metadata ({' '.join(str(exc).split())[:200]}); it was edited "
                            "or cut: save it again") from None
        for i, info in enumerate(runs):
            run = TraceRun(info["batch"], info["prompt_len"])
            for name in FIELDS:
                t = data.get(f"run{i}.{name}")
                if t is not None:
                    run.steps[name] = list(t.unbind(0))
            trace.runs.append(run)
        return trace

    def rows(self):
        """Tidy rows: run, sequence, step, layer, head, score, rank, lambda[, dk, dv]."""
        for i, run in enumerate(self.runs):
            cols = {n: run.tensor(n) for n in FIELDS if run.steps[n]}
            if "lambda" not in cols:
                continue
            s, b, la, h = cols["lambda"].shape
            for step in range(s):
                for seq in range(b):
                    for j in range(la):
                        for head in range(h):
                            row = {"run": i, "sequence": seq, "step": step, "layer": self.layers[j], "head": head}
                            for n, t in cols.items():
                                row[n] = float(t[step, seq, j, head])
                            yield row

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`rows` as CSV."""
        path = Path(path)
        rows = iter(self.rows())
        first = next(rows, None)
        with path.open("w", newline="") as fh:
            if first is None:
                fh.write("run,sequence,step,layer,head,score,rank,lambda\n")
                return path
            writer = csv.DictWriter(fh, fieldnames=list(first))
            writer.writeheader()
            writer.writerow(first)
            writer.writerows(rows)
        return path
