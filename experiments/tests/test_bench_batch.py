"""experiments/bench_batch.py runs end to end on a tiny random model and records machine, threads and ratios."""

import importlib.util
import json

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("bench_batch", ROOT / "experiments" / "bench_batch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_batch_on_a_tiny_random_model(tmp_path):
    out = tmp_path / "r.json"
    assert load_script().main(["--random-shape", "tiny", "--n", "3", "--new-tokens", "2", "--batch-sizes", "1,2",
                               "--repeats", "2", "--prompt-tokens", "5", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["batch_size"] for r in res["batching"]] == [1, 2]
    for r in res["batching"]:
        assert r["items"] == 3 and len(r["ratios"]) == 2 and r["smoothed_over_baseline"] > 0
    for key in ("torch_threads", "OMP_NUM_THREADS", "cpu_count", "loadavg"):
        assert key in res["machine"]
    assert res["config"]["layers"] == "3:-1" and "loadavg_after" in res


@pytest.mark.slow
def test_bench_batch_runner_path_on_smollm2(tmp_path):
    """--runner times the real runner in process (SmolLM2 from the cached GGUF; no download when cached)."""
    out = tmp_path / "r.json"
    assert load_script().main(["--n", "2", "--new-tokens", "2", "--batch-sizes", "2", "--repeats", "1", "--runner",
                               "--runner-batch-sizes", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["runner"][0]
    assert row["batch_size"] == 2 and row["bare_s_per_item"] > 0 and row["runner_loop_s_per_item"] > 0
