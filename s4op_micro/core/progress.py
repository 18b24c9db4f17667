"""Progress for long work: one plain line per step on stderr, and bars only on a terminal.

`log(tag, msg)` writes "[tag] msg" (one write per line: parallel compiles interleave whole lines);
inside `quiet()` nothing is written (the pruning oracle builds many firmwares in a row).
`bar(iterable, desc)` is a tqdm bar when stderr is a terminal, otherwise the bare iterable: a bar
redrawn into a log file becomes a wall of carriage returns.
"""

import contextlib
import sys

_quiet = 0


def log(tag, msg):
    if _quiet:
        return
    sys.stderr.write(f"[{tag}] {msg}\n")
    sys.stderr.flush()


@contextlib.contextmanager
def quiet():
    global _quiet
    _quiet += 1
    try:
        yield
    finally:
        _quiet -= 1


def on_terminal():
    return sys.stderr.isatty()


class _Plain:
    """What `bar` hands out off a terminal: one plain line when the work starts, then iterates;
    postfixes are dropped."""

    def __init__(self, iterable, desc=None):
        self.iterable, self.desc = iterable, desc

    def __iter__(self):
        if self.desc:
            n = len(self.iterable) if hasattr(self.iterable, "__len__") else "?"
            log(self.desc, f"{n} steps (a progress bar is drawn only on a terminal)")
        return iter(self.iterable)

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def bar(iterable, desc, enabled=True):
    if not (enabled and on_terminal() and not _quiet):
        return _Plain(iterable, desc if enabled else None)
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)
