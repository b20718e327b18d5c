"""The runner's output folder: the resumable-records reader and writer, the settings guard, the lock and the
cell names (kvsmooth_hooks/runner/store.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

from kvsmooth_hooks.core.errors import UserError
from kvsmooth_hooks.runner.store import (
    CellStore, RecordsWarning, RunLock, RunLockedError, RunSettingsError, append_jsonl, cell_key, cell_name, guard,
    read_resumable_jsonl,
)


def test_resumable_reader(tmp_path):
    p = tmp_path / "samples.jsonl"
    assert read_resumable_jsonl(p, "id") == {}
    p.write_text('{"id": 1, "v": "a"}\n{"id": 2, "v": "b"}\n{"id": 3, "v": ')
    with pytest.warns(RecordsWarning, match=r"samples.jsonl: 1 line\(s\) not valid JSON .* line 3"):
        assert sorted(read_resumable_jsonl(p, "id")) == ["1", "2"]  # the cut last line is redone
    # a resumed run drops the cut line when it appends; the later record of an id wins
    append_jsonl(p, [{"id": 3, "v": "c"}, {"id": "1", "v": "A"}])
    assert p.read_text().splitlines()[2:] == ['{"id": 3, "v": "c"}', '{"id": "1", "v": "A"}']
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = read_resumable_jsonl(p, "id")
    assert {k: r["v"] for k, r in done.items()} == {"1": "A", "2": "b", "3": "c"}
    # a broken line elsewhere (a run that appended without ending it): skipped with a warning, redone
    p.write_text('{"id": 1}\n{"id": 2, "v\n{"id": 3}\n')
    with pytest.warns(RecordsWarning, match="1 line.* line 2"):
        assert sorted(read_resumable_jsonl(p, "id")) == ["1", "3"]
    p.write_text('{"id": 1}\n["not", "a", "record"]\n')
    with pytest.raises(RunSettingsError, match="samples.jsonl:2: expected a JSON object with field 'id'"):
        read_resumable_jsonl(p, "id")
    p.write_text('{"id": 1}\n{"scene": 2}\n')
    with pytest.raises(RunSettingsError, match="samples.jsonl:2: .*another program"):
        read_resumable_jsonl(p, "id")


def test_append_jsonl(tmp_path):
    p = tmp_path / "a" / "b.jsonl"
    append_jsonl(p, [{"id": 1}])
    append_jsonl(p, [])
    append_jsonl(p, [{"id": 2, "text": "é"}])
    assert read_resumable_jsonl(p, "id") == {"1": {"id": 1}, "2": {"id": 2, "text": "é"}}
    # a file that is one cut line, and a cut line longer than the scan block
    p.write_text('{"id": 1, "v": ')
    append_jsonl(p, [{"id": 5}])
    assert p.read_text() == '{"id": 5}\n'
    p.write_text('{"id": 1}\n{"id": 2, "v": "' + "x" * 200_000)
    append_jsonl(p, [{"id": 3}])
    assert p.read_text() == '{"id": 1}\n{"id": 3}\n'


def test_a_last_line_without_its_newline_is_kept(tmp_path):
    """A finished record whose line lost only the final newline counts as done and survives the next append
    (it used to be truncated away, so the item had no record and the run failed until rerun twice)."""
    p = tmp_path / "r.jsonl"
    p.write_text('{"id": 1, "output": "a"}\n{"id": 2, "output": "b"}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sorted(read_resumable_jsonl(p, "id")) == ["1", "2"]
    append_jsonl(p, [{"id": 3, "output": "c"}])
    assert [json.loads(l)["id"] for l in p.read_text().splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("line,field", [('{"id": "a", "new_tokens": 3, "seconds": 0.1}', "output"),
                                        ('{"id": "a", "output": null, "new_tokens": 3, "seconds": 0.1}', "output"),
                                        ('{"id": "a", "output": "x", "seconds": 0.1}', "new_tokens")])
def test_a_record_without_its_output_is_named(tmp_path, line, field):
    cell = tmp_path / "cells" / "arm"
    cell.mkdir(parents=True)
    (cell / "records.rank0-of1.jsonl").write_text(line + "\n")
    with pytest.raises(RunSettingsError, match=rf"records.rank0-of1.jsonl:1: field '{field}' must be .*delete this line"):
        CellStore(tmp_path, "arm").done()


def test_guard_names_changes_and_damaged_files(tmp_path):
    path = tmp_path / "run.json"
    guard(path, {"n": 3, "generation": {"max_new_tokens": 5}}, "a run")
    guard(path, {"n": 3, "generation": {"max_new_tokens": 5}}, "a run")
    with pytest.raises(RunSettingsError, match="generation.max_new_tokens: 5 there, 6 now"):
        guard(path, {"n": 3, "generation": {"max_new_tokens": 6}}, "a run")
    path.write_text(path.read_text()[:10])  # cut by hand
    with pytest.raises(RunSettingsError, match="run.json: damaged settings file .*delete the folder"):
        guard(path, {"n": 3}, "a run")


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", ".hidden"])
def test_reserved_cell_names_are_refused(tmp_path, name):
    with pytest.raises(UserError, match="cannot be a folder name"):
        cell_name(name)
    with pytest.raises(UserError):
        CellStore(tmp_path, name)


def test_a_second_run_into_one_folder_is_refused(tmp_path):
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from kvsmooth_hooks.runner.store import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(30)\n")
    from helpers import ROOT

    root = str(ROOT)
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), root], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=r"another run \(pid \d+ on .*\) is writing into this folder"):
            with RunLock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the holder is gone: its lock went with it
        assert (tmp_path / "run.lock").exists()
    assert not (tmp_path / "run.lock").exists(), "a finished run leaves no lock file behind"


def test_cell_key_and_check_leave_out_the_toolkit_version(tmp_path):
    run = {"model": "m", "n": 2}
    cfg = {"lambda_ref": 0.9, "toolkit_version": "0.1.0"}
    store = CellStore(tmp_path, "smoothed")
    key = store.check(run, cfg)
    assert key == cell_key(run, cfg) == cell_key(run, {"lambda_ref": 0.9}) != cell_key(run, {"lambda_ref": 0.5})
    assert store.check(run, {**cfg, "toolkit_version": "9.9"}) == key  # a package upgrade resumes the cell
    assert json.loads((tmp_path / "cells" / "smoothed" / "cell.json").read_text()) == \
        {"config": {"lambda_ref": 0.9}, "key": key}
    with pytest.raises(RunSettingsError, match="lambda_ref: 0.9 there, 0.5 now"):
        store.check(run, {"lambda_ref": 0.5})
    assert CellStore(tmp_path, "baseline").check(run, None) == cell_key(run, None)


def test_an_arm_with_a_method_resumes_across_a_package_upgrade(tmp_path):
    # smoothed+vcd: the config sits under "kvsmooth" beside the method's settings; its version is left out too
    run = {"model": "m", "n": 2}
    method = {"name": "vcd", "alpha": 1.0}
    arm = {"kvsmooth": {"lambda_ref": 0.9, "toolkit_version": "0.1.0"}, "method": method}
    store = CellStore(tmp_path, "smoothed+vcd")
    key = store.check(run, arm)
    upgraded = {"kvsmooth": {"lambda_ref": 0.9, "toolkit_version": "9.9"}, "method": method}
    assert store.check(run, upgraded) == key == cell_key(run, upgraded)
    assert cell_key(run, {"kvsmooth": None, "method": method}) != key  # a method arm without smoothing differs
    with pytest.raises(RunSettingsError):
        store.check(run, {"kvsmooth": {"lambda_ref": 0.5}, "method": method})
