"""The overhead benchmark's between-process mode runs end to end on a tiny random model (numbers not checked:
timings are recorded in docs/benchmarks.md, never asserted)."""

import re
import subprocess
import sys
from pathlib import Path

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
