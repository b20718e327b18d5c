"""PNG plots of a saved trace (``kvsmooth trace plot FILE -o DIR``).

* ``lambda_heatmap.png``: mean lambda over KV heads, layer x decode step (first run, first sequence
  unless chosen otherwise);
* ``score_distributions.png``: per-layer distribution of the sink score over all steps and sequences;
* ``clip_bounds.png``: per layer, the share of (step, sequence, head) coefficients at the lower clip bound,
  strictly inside the band, and at the upper bound.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .core.errors import UserError
from .figures import pyplot, save_figure


def clip_bound_shares(trace, run: int = -1, atol: float = 1e-6) -> dict[str, torch.Tensor]:
    """Per active layer: shares of coefficients at the lower bound, inside, at the upper bound (``[La]`` each).

    Disabled heads (lambda 0 with a band that excludes 0) are left out.
    """
    lam = trace.tensor("lambda", run)  # [S, B, La, H]
    lo = torch.tensor(trace.notes["lambda_lo"])[None, None]  # [1, 1, La, H]
    hi = torch.tensor(trace.notes["lambda_hi"])[None, None]
    counted = ~((lam == 0) & (lo > 0))
    at_lo = ((lam - lo).abs() <= atol) & counted
    at_hi = ((lam - hi).abs() <= atol) & counted & ~at_lo
    n = counted.sum(dim=(0, 1, 3)).clamp(min=1).float()
    low = at_lo.sum(dim=(0, 1, 3)) / n
    high = at_hi.sum(dim=(0, 1, 3)) / n
    return {"lower": low, "inside": 1 - low - high, "upper": high}


def plot_trace(path, out_dir, run: int = -1, sequence: int = 0) -> list[Path]:
    """Write the three PNGs for ``path`` (a trace .safetensors) into ``out_dir``; returns their paths."""
    from .core.trace import Trace

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"plot output '{out}' is a file; give a directory (it is created if missing)")
    trace = Trace.load(path)  # refuses non-safetensors files, other files and incomplete traces, naming the file
    if not trace.runs or trace.runs[run].n_steps == 0:
        raise UserError(f"trace '{path}' holds no decode step to plot")
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    lam = trace.tensor("lambda", run)
    score = trace.tensor("score", run)
    layers = trace.layers
    cfg = trace.config
    title = (f"{trace.identity.get('class', '?')} · site={trace.notes.get('site')} · "
             + (f"λ_ref={cfg.lambda_ref} window={cfg.window} clip={cfg.clip} scorer={cfg.scorer.name}" if cfg else ""))
    paths = []

    fig, ax = plt.subplots(figsize=(max(6, lam.shape[0] * 0.08 + 3), max(3, len(layers) * 0.22 + 1.5)))
    im = ax.imshow(lam[:, sequence].mean(-1).T.numpy(), aspect="auto", origin="lower", cmap="viridis",
                   vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(layers)), [str(l) for l in layers], fontsize=7)
    ax.set_xlabel("decode step")
    ax.set_ylabel("layer")
    ax.set_title(f"λ per layer and step (sequence {sequence}, mean over KV heads)\n{title}", fontsize=8)
    fig.colorbar(im, ax=ax, label="λ")
    paths.append(save_figure(fig, out / "lambda_heatmap.png", plt, dpi=120))

    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.35 + 2), 3.6))
    data = [score[:, :, j].reshape(-1).numpy() for j in range(len(layers))]
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(layers) + 1), [str(l) for l in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"score ({cfg.scorer.name if cfg else 'score'})")
    ax.set_title(f"sink-score distribution per layer (all steps and sequences)\n{title}", fontsize=8)
    paths.append(save_figure(fig, out / "score_distributions.png", plt, dpi=120))

    shares = clip_bound_shares(trace, run)
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.35 + 2), 3.6))
    x = range(len(layers))
    ax.bar(x, shares["lower"].numpy(), label="at lower bound", color="#4c72b0")
    ax.bar(x, shares["inside"].numpy(), bottom=shares["lower"].numpy(), label="inside band", color="#dddddd")
    ax.bar(x, shares["upper"].numpy(), bottom=(shares["lower"] + shares["inside"]).numpy(), label="at upper bound",
           color="#dd8452")
    ax.set_xticks(list(x), [str(l) for l in layers], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of tokens")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(f"where λ sits in its clip band\n{title}", fontsize=8)
    paths.append(save_figure(fig, out / "clip_bounds.png", plt, dpi=120))
    return paths
