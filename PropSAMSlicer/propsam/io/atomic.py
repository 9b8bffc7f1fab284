"""Write files so that a crash or an error never leaves a partial or overwritten file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import InputError


def check_writable(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to replace an existing file unless asked; make sure the folder exists."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"output {path} already exists; pass --force to replace it")
    if path.exists() and path.is_dir():
        raise InputError(f"output {path} is a folder, expected a file name")
    if not path.parent.exists():
        raise InputError(f"output folder {path.parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the same folder (same suffixes); rename it over `path` on success."""
    path = Path(path)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from other users (PACS upload)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
