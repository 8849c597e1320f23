"""The trace file format (`rwkv_core.io.trace_file`): version 3 is an uncompressed .npz that round-trips exactly;
version 1 files (compressed) still open; a newer version and hostile files are refused with one line. The options
of version 3 (top-k logits, float16, no residual stream): tests/io/test_trace_options.py."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from rwkv_core.io.checkpoint import load_model
from rwkv_core.io.synthetic import write_random_checkpoint
from rwkv_core.io.trace_file import FORMAT_VERSION, TraceFileError, build_trace, load_trace, save_trace


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> dict[str, np.ndarray]:
    ckpt = tmp_path_factory.mktemp("trace") / "m.pth"
    write_random_checkpoint(ckpt, "6", n_layer=2, n_embd=32, head_size=16, vocab_size=300, seed=5)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    return build_trace(load_model(ckpt), tokens, token_texts=[str(t) for t in tokens], tokenizer_kind="ids")


def test_the_format_is_uncompressed_and_round_trips(arrays, tmp_path):
    save_trace(arrays, tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "t.npz") as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    tr = load_trace(tmp_path / "t.npz")
    assert FORMAT_VERSION == 3 and tr.meta["format_version"] == 3
    assert set(tr.arrays) == set(arrays) - {"meta"}
    for k, a in tr.arrays.items():
        assert a.dtype == arrays[k].dtype and np.array_equal(a, arrays[k]), k
    assert tr.meta["token_texts"] == ["3", "1", "4", "1", "5", "9", "2", "6"] and tr.layers == [0, 1]


def test_version_1_files_still_open(arrays, tmp_path):
    """What the previous export wrote: the same keys, compressed, meta saying format version 1."""
    meta = json.loads(str(arrays["meta"]))
    meta["format_version"] = 1
    np.savez_compressed(tmp_path / "v1.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    tr = load_trace(tmp_path / "v1.npz")
    assert tr.meta["format_version"] == 1 and np.array_equal(tr.arrays["logits"], arrays["logits"])


@pytest.mark.parametrize("version", [4, "2", None, [2]])
def test_unknown_format_version_is_refused_with_one_line(arrays, tmp_path, version):
    meta = {**json.loads(str(arrays["meta"])), "format_version": version}
    np.savez(tmp_path / "new.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(TraceFileError, match="format version") as info:
        load_trace(tmp_path / "new.npz")
    assert "\n" not in str(info.value) and "new.npz" in str(info.value)


def test_hostile_trace_files_are_refused(tmp_path):
    np.savez(tmp_path / "obj.npz", tokens=np.array([1, 2]), meta=np.array([{"x": 1}], dtype=object))
    with pytest.raises(TraceFileError):
        load_trace(tmp_path / "obj.npz")
    np.savez(tmp_path / "shape.npz", tokens=np.array([1, 2, 3]), meta=np.array(json.dumps({"config": {"version": "6"}})),
             r_l0=np.zeros((2, 8), np.float32))
    with pytest.raises(TraceFileError, match="r_l0"):
        load_trace(tmp_path / "shape.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(TraceFileError, match="junk.npz"):
        load_trace(tmp_path / "junk.npz")
