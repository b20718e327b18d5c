"""The lmms-eval plugin (``--model kvsmooth``) on a tiny random LLaVA and a local POPE-style task, offline.

Needs the ``lmms`` extra (lmms-eval 0.7.x; see docs/experiments.md for a CPU-only install); skipped without it.
"""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
lmms_eval = pytest.importorskip("lmms_eval", reason="the lmms extra (lmms-eval) is not installed")

from tiny_vlms import record_sessions, save_tiny_vlm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = """dataset_path: json
dataset_kwargs:
  data_files:
    test: {questions}
task: kvsmooth_pope_local
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 5
  do_sample: false
process_results: !function utils.pope_process_results
metric_list:
  - metric: pope_accuracy
    aggregation: !function utils.pope_aggregate_accuracy
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: " Answer the question using a single word or phrase."
"""
UTILS = """from PIL import Image
from lmms_eval.tasks.pope.utils import pope_aggregate_accuracy, pope_process_results  # noqa: F401
from lmms_eval.tasks.pope.utils import pope_doc_to_text as doc_to_text  # noqa: F401


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]
"""


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("lmms")
    rng = np.random.RandomState(0)
    rows = []
    for i in range(3):
        path = root / f"{i}.jpg"
        Image.fromarray(rng.randint(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        rows.append({"question_id": i, "image_path": str(path), "question": "Is there a dog in the image?",
                     "answer": ["yes", "no"][i % 2]})
    task = root / "task"
    task.mkdir()
    (task / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (task / "kvsmooth_pope_local.yaml").write_text(TASK.format(questions=task / "questions.jsonl"))
    (task / "utils.py").write_text(UTILS)
    cfg = root / "cfg.yaml"
    cfg.write_text('layers: "1:-1"\nlambda_ref: 0.9\n')
    return {"task": task, "model": save_tiny_vlm("llava", root / "llava"), "cfg": cfg}


def test_entry_point_registers_kvsmooth_model():
    from lmms_eval.models import get_model

    cls = get_model("kvsmooth")
    assert cls.__module__ == "kvsmooth_hooks.integrations.lmms_eval" and cls.__name__ == "KVSmoothLMM"


def test_local_task_runs_smoothed_offline(local_task, monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    sessions = record_sessions(monkeypatch)
    args = f"base=llava_hf,pretrained={local_task['model']},config={local_task['cfg']},device_map=cpu"
    res = simple_evaluate(model="kvsmooth", model_args=args, tasks=["kvsmooth_pope_local"], batch_size=1, device="cpu",
                          task_manager=TaskManager(include_path=str(local_task["task"])), log_samples=True)
    assert "pope_accuracy,none" in res["results"]["kvsmooth_pope_local"]
    samples = res["samples"]["kvsmooth_pope_local"]
    assert len(samples) == 3 and all(isinstance(s["resps"][0][0], str) for s in samples)
    # generation ran inside sessions on the wrapper's HF model, which smoothed decode steps and were removed
    assert sessions and all(type(s.model).__name__ == "LlavaForConditionalGeneration" for s in sessions)
    assert all(not s.attached for s in sessions)
    assert max(float(s.trace.tensor("lambda").max()) for s in sessions if s.trace.runs) > 0


def test_missing_base_is_a_clear_error():
    from lmms_eval.models import get_model

    with pytest.raises(ValueError, match="needs model_args base="):
        get_model("kvsmooth")()
