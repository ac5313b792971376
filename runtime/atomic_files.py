"""Atomic file writes (a crash or a full disk never leaves a half-written checkpoint, model or report behind) and
content digests (which tell whether a cached result still belongs to the file it came from)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block finishes without error."""
    target = Path(path)
    if target.is_dir():  # os.replace would fail only after the work, naming the temporary file
        raise IsADirectoryError(errno.EISDIR, "is a directory; give a file name", str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the target's suffix: writers such as FFmpeg pick the container from it.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_usual_permissions(tmp_path)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def give_usual_permissions(path: str | os.PathLike) -> None:
    """Make a ``mkstemp`` file (private, 0600) readable as a file made by ``open()`` would be: 0666 less the umask.

    Without it every checkpoint, model and video written through a temporary name would be unreadable to other
    users, such as a server process or a container running under another account.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks so that large checkpoints and engines need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
