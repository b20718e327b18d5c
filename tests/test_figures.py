"""Figures as functions (kvsmooth_hooks/figures.py): files written, axes checked, bins and heatmap data."""

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig, smooth
from kvsmooth_hooks.figures import chair_vs_length, error_bar, frontier, length_bins, pyplot, save_figure, trace_heatmaps


def rows():
    return [{"arm": "baseline", "CHAIR_S": 40.0, "F1": 75.0, "Recall": 70.0, "ci95": {"CHAIR_S": [35, 45], "F1": [73, 77]}},
            {"arm": "off", "CHAIR_S": 40.0, "F1": 75.0},
            {"arm": "lambda_ref=0.9", "CHAIR_S": 20.0, "F1": 78.0, "ci95": {"CHAIR_S": [15, 26], "F1": [76, 80]}}]


def test_frontier_writes_a_png(tmp_path):
    for y in ("F1", "Recall"):
        p = frontier(rows(), tmp_path / f"frontier_{y}.png", x="CHAIR_S", y=y)
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_frontier_refuses_unknown_or_missing_axes(tmp_path):
    with pytest.raises(ValueError, match="x must be one of"):
        frontier(rows(), tmp_path / "f.png", x="Accuracy")
    with pytest.raises(ValueError, match="no arm has both 'CHAIR_I' and 'F1'"):
        frontier(rows(), tmp_path / "f.png", x="CHAIR_I")


def test_shared_helpers_error_bars_and_saving(tmp_path):
    """The one home of the plotting helpers (figures, plots and the runner's report use them)."""
    r = rows()
    assert error_bar(r[0], "CHAIR_S") == (5.0, 5.0) and error_bar(r[2], "CHAIR_S") == (5.0, 6.0)
    assert error_bar(r[1], "F1") == (0.0, 0.0)  # no interval
    assert error_bar({"F1": 3.0, "ci95": {"F1": [float("nan"), 4.0]}}, "F1") == (0.0, 0.0)  # not finite
    plt = pyplot()
    fig, _ = plt.subplots()
    p = save_figure(fig, tmp_path / "new" / "f.png", plt)  # the folder is made
    assert p.read_bytes()[:4] == b"\x89PNG" and fig.number not in plt.get_fignums()  # closed


def test_length_bins_partition_the_lengths():
    lengths = [5, 7, 9, 12, 12, 20, 31, 40, 41, 60]
    bins = length_bins(lengths, 4)
    assert bins[0][0] == 5 and bins[-1][1] == 60
    assert all(a[1] + 1 == b[0] for a, b in zip(bins, bins[1:]))
    assert sum(any(lo <= n <= hi for lo, hi in bins) for n in lengths) == len(lengths)
    assert length_bins([], 4) == [] and length_bins([3, 3, 3], 4) == [(3, 3)]


def test_chair_vs_length(tmp_path):
    items = [{"arm": a, "length": n, "hallucinated": n > 20 and a == "baseline"} for a in ("baseline", "smoothed")
             for n in range(5, 40, 3)]
    assert chair_vs_length(items, tmp_path / "len.png").stat().st_size > 5000
    with pytest.raises(ValueError, match="no items"):
        chair_vs_length([], tmp_path / "x.png")


def test_trace_heatmaps_from_a_session_and_a_saved_trace(tmp_path):
    model = tiny_llama()
    with smooth(model, KVSmoothConfig(layers="1:")) as s:
        model.generate(input_ids=torch.randint(3, 128, (2, 6)), max_new_tokens=12, do_sample=False)
    made = trace_heatmaps(s.trace, tmp_path / "a")
    assert [p.name for p in made] == ["trace_lambda.png", "trace_score.png"]
    s.trace.save(tmp_path / "t.safetensors")
    assert len(trace_heatmaps(tmp_path / "t.safetensors", tmp_path / "b", sequence=None, prefix="cell")) == 2
    with smooth(model, KVSmoothConfig(layers="1:")) as s2:  # no decode step: refused
        model.generate(input_ids=torch.randint(3, 128, (1, 6)), max_new_tokens=1, do_sample=False)
    with pytest.raises(ValueError, match="no decode step"):
        trace_heatmaps(s2.trace, tmp_path / "c")
