"""File digests (kvsmooth_hooks/eval/digest.py): the run key's and the CHAIR ground-truth cache's one reader."""

import hashlib
import json
import os

from benchmark_data import write_coco
from kvsmooth_hooks.eval.digest import file_digest, file_sha1


def _edit_keeping_size_and_time(path):
    stat = path.stat()
    text = path.read_text()
    edited = text.replace('"category_id": 18', '"category_id": 62', 1)  # same length
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_values_are_the_sha1_of_the_bytes_and_of_a_folder_listing(tmp_path):
    f = tmp_path / "a.json"
    f.write_bytes(b"x" * 10)
    sha1 = hashlib.sha1(b"x" * 10).hexdigest()
    assert file_sha1(f) == sha1 and file_digest(f) == sha1[:16]  # the run key: 16 hex digits (unchanged)
    (tmp_path / "d").mkdir()
    for name in ("b.jpg", "a.jpg"):
        (tmp_path / "d" / name).write_bytes(b"")
    assert file_digest(tmp_path / "d") == "dir:" + hashlib.sha1(b"a.jpg\nb.jpg\n").hexdigest()[:16]


def test_memo_reads_a_file_once_while_its_size_and_time_stay(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('{"category_id": 18}')
    memo = {}
    before = file_sha1(f, memo)
    _edit_keeping_size_and_time(f)
    assert file_sha1(f, memo) == before  # not read again
    assert file_sha1(f) != before  # without the memo it is read
    assert file_sha1(f, {}) != before  # and a new run's memo reads it too


def test_a_chair_run_reads_each_annotation_file_once(tmp_path, monkeypatch):
    """bench.items() builds the ground truth (keyed by the files' sha1), bench.settings() keys the run by the same
    files: the second reads nothing. A new benchmark (a new run) reads them again."""
    from kvsmooth_hooks.benchmarks import get_benchmark

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = write_coco(tmp_path)
    bench = get_benchmark("chair")(data)
    bench.items(2, 0)
    inst = data / "annotations" / "instances_val2014.json"
    _edit_keeping_size_and_time(inst)
    key = bench.settings()["data_files"]
    cache = json.loads(next((tmp_path / "cache" / "kvsmooth_hooks").glob("chair_gt_*.json")).read_text())
    built = dict(cache["meta"]["files"].values())["instances_val2014.json"]
    assert key["annotations/instances_val2014.json"] == built[:16]  # the value the ground truth was built with
    fresh = get_benchmark("chair")(data).settings()["data_files"]
    assert fresh["annotations/instances_val2014.json"] == file_digest(inst) != built[:16]
