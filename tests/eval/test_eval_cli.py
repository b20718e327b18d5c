import argparse
import json
import subprocess
import sys

from helpers import ROOT
from kvsmooth_hooks.eval.cli import add_eval_parser, main, run



def _files(tmp_path):
    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"image_id": 1, "caption": "A man walks a dog next to a car."}\n'
                    '{"image_id": 2, "caption": "Two cats on a bed."}\n')
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"1": ["dog", "person"], "2": ["cat", "bed"]}))
    return caps, gt


def test_chair_command_writes_json(tmp_path, capsys):
    caps, gt = _files(tmp_path)
    out = tmp_path / "res.json"
    assert main(["chair", str(caps), "--gt-objects", str(gt), "-o", str(out), "--bootstrap", "50"]) == 0
    assert "CHAIR_S" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert d["overall"]["CHAIR_S"] == 50.0 and d["overall"]["CHAIR_I"] == 20.0
    c = d["captions"][0]
    assert c["image_id"] == 1
    assert c["mentioned_objects"] == ["person", "dog", "car"]
    assert c["hallucinated_objects"] == ["car"]
    assert c["correct_objects"] == ["person", "dog"]


def test_errors_exit_nonzero_with_one_line_reason(tmp_path, capsys):
    caps, gt = _files(tmp_path)
    assert main(["chair", str(tmp_path / "missing.jsonl"), "--gt-objects", str(gt)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "missing.jsonl" in err[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image_id": 1, "caption": "a"}\n\n{"caption": "b"}\n')
    assert main(["chair", str(bad), "--gt-objects", str(gt)]) == 2
    assert "bad.jsonl:3: no image id field" in capsys.readouterr().err


def test_add_eval_parser_in_parent_cli(tmp_path):
    caps, gt = _files(tmp_path)
    parser = argparse.ArgumentParser(prog="kvsmooth")
    sub = parser.add_subparsers(dest="command")
    add_eval_parser(sub)
    args = parser.parse_args(["eval", "chair", str(caps), "--gt-objects", str(gt), "--bootstrap", "0"])
    assert args.command == "eval" and args.eval_command == "chair"
    assert run(args) == 0


def test_pope_command(tmp_path):
    q = tmp_path / "q.jsonl"
    q.write_text('{"question_id": 1, "image": "x.jpg", "text": "Is there a dog in the image?", "label": "yes"}\n')
    a = tmp_path / "a.jsonl"
    a.write_text('{"question_id": 1, "text": "Yes."}\n')
    out = tmp_path / "p.json"
    assert main(["pope", str(q), str(a), "--bootstrap", "0", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["overall"]["Accuracy"] == 100.0


def test_module_entry_point(tmp_path):
    caps, gt = _files(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "kvsmooth_hooks.eval.cli", "chair", str(caps), "--gt-objects",
                           str(gt), "--bootstrap", "0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "CHAIR_S   :   50.0" in proc.stdout
