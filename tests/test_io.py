"""``fluxtrain._io.atomic_write``: the one place that writes files atomically."""
import os

import numpy as np
import pytest

import fluxtrain as ft
from fluxtrain._io import atomic_write


def _fail(*args, **kwargs):
    raise OSError("disk full")


def test_atomic_write_writes_and_replaces(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write(path, lambda f: f.write(b"old"))
    atomic_write(str(path), lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_failing_write_keeps_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"half")
        _fail()
    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old"
    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "new.bin", _fail)  # a failed new file is not created
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("name", ["s.npz", "s.safetensors"])
def test_save_state_is_atomic(tmp_path, monkeypatch, name):
    state = ft.setup(ft.optimise.Adam(), {"w": np.ones(3)})
    path = tmp_path / name
    ft.save_state(path, state)
    before = path.read_bytes()
    if name.endswith(".npz"):
        def savez_half(file, **arrays):  # writes part of the file, then fails
            f = file if hasattr(file, "write") else open(file, "wb")
            f.write(b"half")
            f.flush()
            _fail()
        monkeypatch.setattr(np, "savez", savez_half)
    else:
        monkeypatch.setattr(pytest.importorskip("safetensors.numpy"), "save", _fail)
    with pytest.raises(OSError, match="disk full"):
        ft.save_state(path, state)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == [name]
