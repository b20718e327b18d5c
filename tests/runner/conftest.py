"""Shared by the runner's tests: the benchmarks' official files, synthetic and small (tests/benchmark_data.py)."""

import pytest

from benchmark_data import write_all


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """``{name: path}`` of every benchmark's files, plus ``cfg``: a config that smooths layers 1..L-2 (the tiny
    models have 4 layers: the paper's presets select none of them)."""
    root = tmp_path_factory.mktemp("bench")
    paths = write_all(root)
    cfg = root / "cfg.yaml"
    cfg.write_text('layers: "1:-1"\nlambda_ref: 0.9\n')
    return {**paths, "cfg": cfg}
