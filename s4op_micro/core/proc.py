"""The one way s4op-micro runs an external tool (compiler, objcopy, QEMU, cmake, the host build).

A failure becomes a one-line UserError naming the tool's first error line and, when kept, the log
with the whole output; a time-out kills the tool's whole process group.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass

from .errors import UserError


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def first_error_line(text):
    """The line a person wants to see from a failed tool: the first that mentions an error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "(no output)")


def run_tool(cmd, what, log=None, cwd=None, check=True, input=None, timeout=None, text=True, on_timeout=UserError):
    """Run cmd; append the command and its output to `log` (a path) if given. check: a non-zero exit
    raises UserError("{what} failed: <first error line> (full log: LOG)"). timeout (seconds): the
    process group is killed and `on_timeout` (a UserError class) says so."""
    cmd = [str(c) for c in cmd]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=text)
    try:
        out, err = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # our own process group (start_new_session)
        out, err = proc.communicate()
        tail = (out if text else out.decode(errors="replace")).strip().splitlines()[-1:] or ["(no output)"]
        raise on_timeout(f"{what} did not finish within {timeout:g} s (killed; last output: {tail[0][:80]!r}); "
                        "it hangs or needs a longer --timeout") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    res = ToolRun(proc.returncode, out, err, time.monotonic() - start)
    if log is not None:
        with open(log, "a") as f:
            f.write("$ " + " ".join(cmd) + "\n" + (out if text else "") + (err if text else "") + "\n")
    if check and proc.returncode != 0:
        detail = first_error_line((err + out) if text else err.decode(errors="replace"))
        raise UserError(f"{what} failed: {detail}" + (f" (full log: {log})" if log else ""))
    return res
