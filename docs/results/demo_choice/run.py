import json, sys, time
import torch
from kvsmooth_hooks import KVSmoothConfig
from kvsmooth_hooks.models import load_smollm2
from kvsmooth_hooks.benchmarks.grounded import evaluate_config
torch.set_num_threads(1)
model, tok = load_smollm2(quiet=True)
arms = {"baseline": None,
        "demo-0.5-15": KVSmoothConfig(lambda_ref=0.5, layers="15:-1"),
        "0.3-3": KVSmoothConfig(lambda_ref=0.3, layers="3:-1"),
        "0.7-15": KVSmoothConfig(lambda_ref=0.7, layers="15:-1"),
        "0.5-10-20": KVSmoothConfig(lambda_ref=0.5, layers="10:20"),
        "0.9-20": KVSmoothConfig(lambda_ref=0.9, layers="20:-1"),
        }
N = int(sys.argv[1])
for name, cfg in arms.items():
    t = time.time()
    s = evaluate_config(model, tok, cfg, n_scenes=N, seed=0, out_dir=f"/tmp/demo_sweep/{name}", progress=False)
    print(name, {k: round(s[k], 1) for k in ("CHAIR_S", "CHAIR_I", "Recall", "Rep3", "Len")}, s["ci95"]["CHAIR_S"], round(time.time() - t), "s", flush=True)
