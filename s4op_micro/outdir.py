"""Atomic output directories: a command writes into a temporary sibling and renames it at the end,
so an error never leaves a half-written DIR behind."""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError


@contextlib.contextmanager
def atomic_output_dir(path, force=False, allow_existing=False):
    """Yield a temporary directory that replaces `path` only if the block finishes without error.

    force: replace an existing `path`.  allow_existing: start from a copy of an existing `path`
    (for commands that add files to a directory, e.g. `prune` next to earlier results).
    """
    path = Path(path)
    if path.exists() and not (force or allow_existing):
        raise UserError(f"output directory {path} already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if allow_existing and path.exists() and not force:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old.{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path, data):
    """Write a file through a temporary name and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
