"""The demo-setting sweep of docs/demo.md as one runner call (the recorded numbers were made at commit 343c800
with an earlier loop that the runner replaced; same scenes, prompts and greedy settings).

    python docs/results/demo_choice/run.py 60
"""
import sys
import tempfile
from pathlib import Path

from kvsmooth_hooks.runner.cli import main

ARMS = """arms:
  - {name: demo-0.5-15, set: {lambda_ref: 0.5, layers: "15:-1"}}
  - {name: 0.3-3, set: {lambda_ref: 0.3, layers: "3:-1"}}
  - {name: 0.7-15, set: {lambda_ref: 0.7, layers: "15:-1"}}
  - {name: 0.5-10-20, set: {lambda_ref: 0.5, layers: "10:20"}}
  - {name: 0.9-20, set: {lambda_ref: 0.9, layers: "20:-1"}}
"""
N = sys.argv[1] if len(sys.argv) > 1 else "60"
grid = Path(tempfile.mkdtemp()) / "demo_choice.yaml"
grid.write_text(ARMS)
sys.exit(main(["--model", "smollm2", "--benchmark", "grounded", "--n", N, "--batch-size", "10", "--arms", "baseline",
               "--grid-file", str(grid), "--out", "/tmp/demo_sweep", "--no-progress"]))
