"""Atomic writes (runtime/atomic_files.py): the target appears complete, with the usual permissions, or not at all."""

from __future__ import annotations

import hashlib
import os

import pytest

from edgeseg.runtime.atomic_files import atomic_path, file_sha256, write_json_atomic


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_finished_file_replaces_the_target_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".onnx" and tmp != target  # writers pick by suffix
        tmp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not mkstemp's private 0600
    assert list(target.parent.iterdir()) == [target]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_json_atomic(tmp_path / "result.json", {"miou": 0.5})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("{half", encoding="utf-8")
            raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == '{\n  "miou": 0.5\n}\n'
    assert list(tmp_path.iterdir()) == [target]


def test_file_sha256_reads_large_files_in_blocks(tmp_path):
    path = tmp_path / "weights.bin"
    data = os.urandom(3 * (1 << 20) + 123)  # more than one 1 MiB block, and not a whole number of them
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
