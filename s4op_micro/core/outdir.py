"""Output directories that are never half-written and never destroy what s4op-micro did not make.

A command writes into a temporary sibling (.NAME.XXXX) and renames it into place only when it
finishes; on any exit path (error, Ctrl-C, SIGTERM via the CLI's handler, an exception) the
temporary is removed. Every directory made this way carries a marker file, and --force replaces
only a directory with that marker.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

MARKER = ".s4op-micro"          # in every output directory s4op-micro makes
SYSTEM_ROOTS = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/usr", "/lib")


def check_output_path(path, force=False, allow_existing=False):
    """The output directory `path` as a Path if s4op-micro may write it; else a one-line UserError.
    Checked before any work: a path that cannot work, an existing directory without force (or one
    s4op-micro did not make, even with force), a regular file in the way."""
    if path is None or str(path).strip() == "":
        raise UserError("the output directory is empty; pass --out DIR")
    p = Path(path)
    resolved = p.resolve()
    if resolved in (Path.cwd().resolve(), Path.home().resolve(), Path("/")):
        raise UserError(f"refusing to write into {resolved} (the current, home or root directory); pass --out NEWDIR")
    if any(str(resolved) == r or str(resolved).startswith(r + "/") for r in SYSTEM_ROOTS):
        raise UserError(f"--out {p} is inside the system directory {resolved.parts[0]}{resolved.parts[1]}; pass a directory of your own")
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {p} lies under the file {parent}, not a directory; pass another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {p}: no permission to write in {parent}; pass a directory you can write")
    if p.exists() and not p.is_dir():
        raise UserError(f"--out {p} is a file, not a directory; remove it or pass another --out")
    if p.is_dir():
        if not (force or allow_existing):
            raise UserError(f"output directory {p} already exists; pass --force to replace it")
        if force and not (p / MARKER).is_file() and any(p.iterdir()):
            raise UserError(f"--force replaces only directories s4op-micro made, and {p} holds other files "
                            f"(no {MARKER} marker); pass another --out")
    return p


@contextlib.contextmanager
def atomic_output_dir(path, force=False, allow_existing=False):
    """Yield a temporary directory that replaces `path` only if the block finishes without error.

    force: replace an existing `path` (one s4op-micro made). allow_existing: start from a copy of an
    existing `path` (for commands that add files to a directory, e.g. `prune` next to earlier results).
    """
    path = check_output_path(path, force, allow_existing)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if allow_existing and path.exists() and not force:
            shutil.copytree(path, tmp, dirs_exist_ok=True)
        (tmp / MARKER).write_text("made by s4op-micro: --force may replace this directory\n")
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
