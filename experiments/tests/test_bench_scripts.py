"""The timing scripts' modes run end to end: bench_overhead's between-process mode on a tiny random model,
hook_time's per-step split on SmolLM2 (slow). Timings are recorded in docs/benchmarks.md, never asserted."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXP = Path(__file__).resolve().parents[2] / "experiments"


def test_bench_overhead_processes_reports_every_process():
    proc = subprocess.run([sys.executable, str(EXP / "bench_overhead.py"), "--random-shape", "tiny", "--processes", "2",
                           "--pairs", "1", "--new-tokens", "4", "--warmup", "0", "--threads", "1",
                           "--arms", "kvsmooth,kvsmooth-kv_proj"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "2 processes, 1 pairs each" in out and "tiny-shaped Llama" in out
    for arm in ("kvsmooth", "kvsmooth-kv_proj"):
        row = next(line for line in out.splitlines() if line.startswith(f"| {arm} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(re.findall(r"\d\.\d{3}", cells[1])) == 2 and len(re.findall(r"\d\.\d{3}", cells[3])) == 2
    assert out.rstrip().splitlines()[-1].endswith("--arms kvsmooth,kvsmooth-kv_proj")  # the command, --processes kept
    assert "--processes 2" in out.rstrip().splitlines()[-1] and "--json-out" not in out


@pytest.mark.slow
def test_hook_time_paired_splits_every_step():
    """``hook_time.py --paired`` (SmolLM2): the per-run table and the per-step split. A subprocess, as the script
    wraps the session's methods for its whole process."""
    proc = subprocess.run([sys.executable, str(EXP / "hook_time.py"), "--new-tokens", "4", "--repeats", "1",
                           "--paired", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert any(line.startswith("| 0 | ") for line in lines)
    assert "1 interleaved pairs, 3 decode steps per side" in proc.stdout
    split = [float(c) for c in lines[-1].strip("|").split("|")]
    assert len(split) == 6 and split[3] > 0  # kvsmooth code per step
    assert split[4] == pytest.approx(split[1] - split[3], abs=0.05 * split[1])  # step minus our code
