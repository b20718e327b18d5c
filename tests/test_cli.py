"""`kvsmooth demo` on a tiny random model (fast) and on SmolLM2 (slow), and the CLI's one-line errors."""

import re
import subprocess
import sys

import pytest
import torch

from helpers import tiny_llama
from kvsmooth_hooks import KVSmoothConfig
from kvsmooth_hooks.cli import main
from kvsmooth_hooks.demo import run_demo

pytestmark = pytest.mark.usefixtures("one_thread")


class ChatWordTok:
    """A minimal chat tokenizer for a tiny random model: words <-> ids; decoding yields COCO words."""

    pad_token = eos_token = "<pad>"
    pad_token_id = 0
    padding_side = "left"

    def apply_chat_template(self, msgs, add_generation_prompt=True, tokenize=False):
        return " ".join(m["content"] for m in msgs) + " assistant:"

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        rows = [[3 + sum(map(ord, w)) % 90 for w in t.split()] for t in texts]
        n = max(map(len, rows))
        return {"input_ids": torch.tensor([[0] * (n - len(r)) + r for r in rows]),
                "attention_mask": torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows])}

    def decode(self, ids, skip_special_tokens=True):
        words = ["dog", "car", "a", "the", "bench", "cat", "clock", "and"]
        return " ".join(words[int(i) % len(words)] for i in ids)


def test_demo_on_a_tiny_model_marks_objects_and_scores_both_arms(tmp_path):
    model = tiny_llama(layers=4)
    model.generation_config.pad_token_id = 0
    lines = []
    trace = tmp_path / "t.safetensors"
    res = run_demo(KVSmoothConfig(layers="1:-1"), model, ChatWordTok(), n_scenes=4, scene=1, max_new_tokens=8,
                   width=80, layer_table=True, save_trace=str(trace), progress=False, echo=lines.append)
    out = "\n".join(lines)
    assert "baseline" in out and "KVSmooth" in out and "[+obj]: in the scene" in out
    assert re.search(r"\[[+!](dog|car|bench|cat|clock)\]", out)  # the tiny model's words are marked
    assert len(res["records"]["baseline"]) == 4 and len(res["records"]["KVSmooth"]) == 4
    # the shown scene's texts are the batch's texts for that scene
    shown = res["records"]["baseline"][1]
    assert shown["output"] == res["texts"][0]
    for name in ("CHAIR_S", "CHAIR_I", "Recall", "Rep3"):
        assert any(l.startswith(name) for l in lines)
    assert "Reading: on 4 scenes" in out and "layer   entropy" in out
    assert trace.is_file()
    assert res["texts"][0] != res["texts"][1] or res["comparison"]["Rep3"]["diff"] == 0  # smoothing ran
    # a marked invention is counted as such by CHAIR
    marks = res["marks"]
    assert marks[0]["invented"] == sorted(set(shown["hallucinated_objects"]), key=shown["hallucinated_objects"].index)


def test_demo_free_prompt_has_no_batch():
    model = tiny_llama(layers=4)
    model.generation_config.pad_token_id = 0
    lines = []
    res = run_demo(KVSmoothConfig(layers="1:-1"), model, ChatWordTok(), prompt="Tell me a story.", max_new_tokens=5,
                   progress=False, echo=lines.append)
    assert "records" not in res and "Prompt: \"Tell me a story.\"" in "\n".join(lines)


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err and err[0].startswith("error: "), err
    assert "Traceback" not in "\n".join(err)
    return err[0]


def test_export_refuses_bad_outputs_before_resolving(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    assert main(["config", "init", "-o", str(cfg)]) == 0
    # --model is never read when the output is wrong: the check comes first
    assert "is a directory" in _err(capsys, ["export", str(cfg), "--model", "nowhere", "-o", str(tmp_path)])
    assert "does not exist" in _err(capsys, ["export", str(cfg), "--model", "nowhere", "-o",
                                             str(tmp_path / "missing" / "p.safetensors")])
    assert "must end in .safetensors" in _err(capsys, ["export", str(cfg), "--model", "nowhere", "-o",
                                                       str(tmp_path / "plan.yaml")])
    assert not (tmp_path / "plan.yaml").exists()


def test_demo_checks_trace_path_before_generating(tmp_path, capsys, monkeypatch):
    import kvsmooth_hooks.models as models

    def boom(*a, **k):  # the model must not even be loaded
        raise AssertionError("loaded the model before checking --save-trace")

    monkeypatch.setattr(models, "load_smollm2", boom)
    assert "is a directory" in _err(capsys, ["demo", "--save-trace", str(tmp_path)])
    assert "does not exist" in _err(capsys, ["demo", "--save-trace", str(tmp_path / "no" / "t.safetensors")])
    assert "must end in .safetensors" in _err(capsys, ["demo", "--save-trace", str(tmp_path / "t.json")])


def test_trace_plot_refuses_non_traces(tmp_path, capsys):
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    junk.write_text("hello")
    assert "not a safetensors file" in _err(capsys, ["trace", "plot", str(junk), "-o", str(tmp_path / "p")])
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    assert "not a kvsmooth_hooks trace" in _err(capsys, ["trace", "plot", str(other), "-o", str(tmp_path / "p")])
    noconf = tmp_path / "noconf.safetensors"
    save_file({"run0.lambda": torch.zeros(1, 1, 1, 1)}, str(noconf), metadata={"format": "kvsmooth_hooks.core.trace/1"})
    assert "lacks its config" in _err(capsys, ["trace", "plot", str(noconf), "-o", str(tmp_path / "p")])
    assert "does not exist" in _err(capsys, ["trace", "plot", str(tmp_path / "none.safetensors"), "-o", "p"])


def test_trace_load_refuses_with_a_user_error_naming_the_file(tmp_path, capsys):
    """Trace.load itself says what is wrong (a UserError, exit 2 in every command), not the trace command."""
    from safetensors.torch import save_file

    from kvsmooth_hooks.core.errors import UserError
    from kvsmooth_hooks.core.trace import Trace

    missing = tmp_path / "none.safetensors"
    with pytest.raises(UserError, match=re.escape(f"trace file '{missing}' does not exist")):
        Trace.load(missing)
    with pytest.raises(UserError, match="it is a directory"):
        Trace.load(tmp_path)
    meta = {"format": "kvsmooth_hooks.core.trace/1", "config": "null", "layers": "[0", "n_kv_heads": "1",
            "identity": "{}", "runs": "[]", "notes": "{}"}  # layers cut short
    damaged = tmp_path / "damaged.safetensors"
    save_file({"run0.lambda": torch.zeros(1, 1, 1, 1)}, str(damaged), metadata=meta)
    with pytest.raises(UserError, match=re.escape(f"trace '{damaged}': damaged metadata")):
        Trace.load(damaged)
    assert "damaged metadata" in _err(capsys, ["trace", "plot", str(damaged), "-o", str(tmp_path / "p")])


@pytest.mark.slow
def test_demo_on_smollm2_end_to_end():
    """The real command, as a user runs it (a few scenes to keep CI short): both columns, marks, the table."""
    proc = subprocess.run([sys.executable, "-m", "kvsmooth_hooks.cli", "demo", "--scenes", "4", "--max-new-tokens",
                           "32", "--no-progress"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "baseline" in out and "KVSmooth" in out and "Scene s0-00074" in out
    assert "[+" in out  # not a TTY: plain markers; SmolLM2 names at least one scene object
    for name in ("CHAIR_S", "CHAIR_I", "Recall", "Rep3"):
        assert re.search(rf"^{name}\s+[\d.]+ \[", out, re.M), name
    assert "Reading: on 4 scenes" in out
