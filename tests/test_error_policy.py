"""One error policy for every command: each user mistake exits 2 with one line that names the option, file or
field and the fix (one row per mistake the issue lists); an unexpected error asks to be reported, exit 1, and
shows its traceback only on request."""

from __future__ import annotations

import json

import pytest
import torch

from kvsmooth_hooks.cli import main as kvsmooth
from runner_args import text_argv

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(tmp_path, *extra, layers="1:-1"):
    return ["run", *text_argv(tmp_path, tmp_path / "run", *extra, layers=layers)]


def _with(argv, flag, value):
    argv = list(argv)
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    return argv


def _write(path, text):
    path.write_text(text)


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}:load"


def _grid(tmp_path, content: bytes):
    p = tmp_path / "grid.yaml"
    p.write_bytes(content)
    return ["--grid-file", str(p)]


def _finished(tmp_path):
    """A finished run in tmp_path/run (the next call is the rerun)."""
    assert kvsmooth(_argv(tmp_path)) == 0
    return tmp_path / "run"


def _edit_record(tmp_path, change):
    out = _finished(tmp_path)
    f = out / "cells" / "smoothed" / "records.rank0-of1.jsonl"
    lines = f.read_text().splitlines()
    rec = json.loads(lines[0])
    change(rec)
    f.write_text("\n".join([json.dumps(rec)] + lines[1:]) + "\n")


def _cut(path):
    path.write_text(path.read_text()[:15])


# id: (how to make the mistake -> argv, what the one line must say)
ROWS = {
    "loader-colon-only": (lambda t, m: _with(_argv(t), "--loader", ":"), "--loader ':': use module:function"),
    "loader-relative": (lambda t, m: _with(_argv(t), "--loader", ".rel:f"), "--loader '.rel:f': use module:function with an absolute"),
    "loader-empty-part": (lambda t, m: _with(_argv(t), "--loader", "a..b:load"), "--loader 'a..b:load': use module:function"),
    "loader-not-a-name": (lambda t, m: _with(_argv(t), "--loader", "my-loader:load"), "--loader 'my-loader:load': use "),
    "loader-function-path": (lambda t, m: _with(_argv(t), "--loader", "mod:a.b"), "--loader 'mod:a.b': use module:function"),
    "loader-signature": (lambda t, m: _with(_argv(t), "--loader", _module(t, m, "sig_loader", "def load():\n    pass\n")),
                         "cannot be called as load(model_id, device=..., dtype=...)"),
    "loader-raises-on-import": (lambda t, m: _with(_argv(t), "--loader", _module(t, m, "boom_loader", "raise RuntimeError('no weights here')\n")),
                                "importing module 'boom_loader' raised RuntimeError: no weights here"),
    "device-gpu": (lambda t, m: _with(_argv(t), "--device", "gpu"), "--device 'gpu': not a device"),
    "device-cuda-on-cpu-build": (lambda t, m: _with(_argv(t), "--device", "cuda"), "sees no CUDA GPU; use --device cpu"),
    "dtype-int8": (lambda t, m: _with(_argv(t), "--dtype", "int8"), "--dtype 'int8': use auto, float32, float16, bfloat16"),
    "out-is-a-file": (lambda t, m: (_write(t / "file.txt", "x"), _with(_argv(t), "--out", str(t / "file.txt")))[1],
                      "is a file; give a folder"),
    "single-step-0": (lambda t, m: _argv(t, "--grid", "layers", "--single-step", "0"), "--single-step 0: must be between 1"),
    "grounded-min-objects": (lambda t, m: _argv(t, "--set", "min_objects=9"), "--set min_objects=9 / max_objects=6"),
    "grid-invalid-yaml": (lambda t, m: _argv(t, *_grid(t, b"arms: [unclosed\n")), "grid.yaml' is not valid YAML"),
    "grid-not-utf8": (lambda t, m: _argv(t, *_grid(t, b"arms:\n  - name: caf\xe9\n")), "is not UTF-8 text"),
    "grid-set-as-list": (lambda t, m: _argv(t, *_grid(t, b"arms:\n  - name: a\n    set: [lambda_ref, 0.5]\n")),
                         "'set' must be a mapping of config fields"),
    "record-without-output": (lambda t, m: _edit_record(t, lambda r: r.pop("output")) or _argv(t),
                              "records.rank0-of1.jsonl:1: field 'output' must be str"),
    "record-output-null": (lambda t, m: _edit_record(t, lambda r: r.update(output=None)) or _argv(t),
                           "records.rank0-of1.jsonl:1: field 'output' must be str, got null"),
    "run-json-truncated": (lambda t, m: _cut(_finished(t) / "run.json") or _argv(t), "run.json: damaged settings file"),
    "cell-json-truncated": (lambda t, m: _cut(_finished(t) / "cells" / "smoothed" / "cell.json") or _argv(t),
                            "cell.json: damaged settings file"),
    "config-layer-99": (lambda t, m: (_write(t / "base.yaml", "layers: [99]\n"), _argv(t))[1],
                        "layers: layer 99 is out of range for this model's 4 layers"),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_user_mistake_exits_2_with_one_line(row, tmp_path, monkeypatch, capsys):
    if row == "device-cuda-on-cpu-build" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    make, expected = ROWS[row]
    argv = make(tmp_path, monkeypatch)
    capsys.readouterr()
    assert kvsmooth(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert "Traceback" not in err[0]


def test_an_unexpected_error_asks_to_be_reported(tmp_path, monkeypatch, capsys):
    import kvsmooth_hooks.runner.cli as runner_cli

    def bug(*a, **k):
        return {}["missing"]

    monkeypatch.setattr(runner_cli, "run", bug)
    assert kvsmooth(_argv(tmp_path)) == 1
    err = capsys.readouterr().err
    assert "error: unexpected KeyError" in err and "please report it" in err and "Traceback" not in err
    assert kvsmooth(_argv(tmp_path, "--traceback")) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "please report it" in err
    monkeypatch.setenv("KVSMOOTH_TRACEBACK", "1")
    assert kvsmooth(["config", "show", str(tmp_path / "none.yaml")]) == 2  # user mistakes stay one line first
    assert capsys.readouterr().err.startswith("error: config file")


def test_every_package_error_derives_from_the_base():
    import kvsmooth_hooks.benchmarks  # noqa: F401  (registers everything)
    import kvsmooth_hooks.eval  # noqa: F401
    import kvsmooth_hooks.runner.cli  # noqa: F401
    from kvsmooth_hooks.core.errors import KVSmoothError

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {c for c in subclasses(Exception) if c.__module__.startswith("kvsmooth_hooks") and not issubclass(c, Warning)}
    assert len(ours) >= 10
    assert not {c.__qualname__ for c in ours if not issubclass(c, KVSmoothError)}


def test_one_traceback_option_everywhere(tmp_path, monkeypatch, capsys):
    """--traceback (core.errors.add_traceback_option) on kvsmooth, its eval and run subcommands and the stand-alone
    runner and eval parsers; a subcommand never resets the main command's flag."""
    import kvsmooth_hooks.runner.cli as runner_cli
    from kvsmooth_hooks.cli import build_parser
    from kvsmooth_hooks.eval.cli import build_parser as eval_parser

    chair = ["chair", "c.jsonl", "--gt-objects", "g.json"]
    for argv, want in ((["--traceback", "eval", *chair], True), (["eval", *chair, "--traceback"], True),
                       (["eval", *chair], False), (["--traceback", "run", "--model", "m"], True),
                       (["run", "--model", "m", "--traceback"], True), (["--traceback", "demo"], True), (["demo"], False)):
        assert getattr(build_parser().parse_args(argv), "traceback", False) is want, argv
    assert runner_cli.build_parser().parse_args(["--model", "m", "--traceback"]).traceback is True
    assert eval_parser().parse_args([*chair, "--traceback"]).traceback is True
    monkeypatch.setattr(runner_cli, "run", lambda *a, **k: {}["missing"])
    assert kvsmooth(["--traceback", *_argv(tmp_path)]) == 1  # given before the subcommand
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_closed_output_pipe_is_not_reported_as_a_bug():
    # `kvsmooth config schema | head -1`: the reader goes away before the output is written
    import subprocess
    import sys

    from helpers import ROOT

    proc = subprocess.Popen([sys.executable, "-c", "import sys; from kvsmooth_hooks.cli import main; sys.exit(main())",
                             "config", "schema"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait() == 141, err
    assert "unexpected" not in err and "Exception ignored" not in err and "Traceback" not in err
