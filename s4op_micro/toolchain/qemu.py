"""Running a firmware: in QEMU (an emulated board; costs are emulated instructions) or natively on
this machine (a host build; no costs). Both return the parsed S4OP records."""

import shutil
from fractions import Fraction
from pathlib import Path

from ..codegen.project import qemu_args
from ..core.boards import get_board
from ..core.checks import emulated_board
from ..core.errors import UserError
from ..core.proc import run_tool
from .records import FirmwareTimeout, RunResult, fault_error, parse_records

APT_QEMU = "qemu-system-arm"


def _records(res, what, elf):
    text = res.stdout + res.stderr
    records = parse_records(text)
    for r in records:
        if r["kind"] == "fault":
            raise fault_error(r, f" ({what})", elf)
    if res.returncode != 0 and not records:
        tail = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
        raise UserError(f"{what} exited with code {res.returncode} and printed no S4OP record: {tail[0][:120]}")
    return RunResult(exit_code=res.returncode, lines=records, raw=text, seconds=res.seconds)


def qemu_command(elf, board, icount_shift=None, plugin=None):
    """The QEMU command line of a firmware run; plugin: a TCG plugin "FILE,key=value,..." to load."""
    board = get_board(board)
    return [shutil.which("qemu-system-arm") or "qemu-system-arm", *qemu_args(board, icount_shift),
            *(["-plugin", plugin] if plugin else []), "-kernel", str(elf)]


def run_qemu(elf, board, timeout=60.0, icount_shift=None, plugin=None):
    """Run firmware built for an emulated board in QEMU (semihosting, -icount). Costs are emulated
    instructions. icount_shift overrides the board's shift; the firmware's conversion assumes the
    board's, so the costs are rescaled to instructions. plugin: see qemu_command."""
    board = emulated_board(board, "run it in QEMU")
    if not shutil.which("qemu-system-arm"):
        raise UserError(f"qemu-system-arm not found on PATH; install it: apt-get install --no-install-recommends {APT_QEMU}")
    if not Path(elf).is_file():
        raise UserError(f"no firmware at {elf}; build it first (s4op-micro build)")
    what = f"QEMU {board.qemu_machine}"
    res = _records(run_tool(qemu_command(elf, board, icount_shift, plugin), what, check=False, timeout=timeout,
                            on_timeout=FirmwareTimeout), what, elf)
    if icount_shift is not None and icount_shift != board.icount_shift:
        factor = Fraction(2 ** board.icount_shift, 2 ** icount_shift)
        for r in res.lines:
            if r["kind"] in ("seq", "layer", "summary") and "cost" in r:
                r["cost"] = round(r["cost"] * factor)
    return res


def run_host(exe, timeout=60.0):
    """Run a host build of the benchmark firmware (costs are 0, unit "none")."""
    if not Path(exe).is_file():
        raise UserError(f"no host executable at {exe}; build it with --host first")
    return _records(run_tool([exe], "host firmware", check=False, timeout=timeout, on_timeout=FirmwareTimeout),
                    "host firmware", None)
