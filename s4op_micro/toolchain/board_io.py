"""A real board: flash it with pyocd, read its benchmark output from a serial port."""

import contextlib
import io
import logging
import sys
import time
from pathlib import Path

from ..core.boards import BOARDS, get_board
from ..core.errors import UserError
from ..core.progress import log
from .build import build
from .records import FirmwareTimeout


def flash(project_or_hex, board, probe=None):
    """Program a board with pyocd: an export directory (built first) or a .hex/.elf/.bin file."""
    board = get_board(board)
    if not board.pyocd_target:
        raise UserError(f"{board.name} is an emulated core with no real board to flash; pick a named board "
                        f"({', '.join(b for b, v in BOARDS.items() if v.pyocd_target)})")
    path = Path(project_or_hex)
    if not (path.is_dir() or path.is_file()):
        raise UserError(f"{path} is neither an export directory nor a firmware file")
    try:
        from pyocd.core.exceptions import Error as PyocdError
        from pyocd.core.helpers import ConnectHelper
        from pyocd.flash.file_programmer import FileProgrammer
    except ImportError:
        raise UserError("pyocd is not installed; install it: pip install 's4op-micro[board]' (or pip install pyocd)") from None
    logging.getLogger("pyocd").setLevel(logging.WARNING)   # pyocd's chatter stays off stdout (and --json)
    with contextlib.redirect_stdout(io.StringIO()):   # the probe first: no build for a board that is not there;
        # pyocd prints its own coloured "No connected debug probes": our one line says it instead
        session = ConnectHelper.session_with_chosen_probe(unique_id=probe, target_override=board.pyocd_target,
                                                          blocking=False, return_first=probe is None,
                                                          options={"frequency": 4_000_000})
    if session is None:
        which = f"probe {probe!r}" if probe else "debug probe"
        raise UserError(f"no {which} found; connect {board.name}'s debug USB port (`pyocd list` shows probes)")
    if path.is_dir():
        path = build(path, board).hex
    try:
        with session, contextlib.redirect_stdout(sys.stderr):
            log(f"flash {board.name}", f"programming {path.name} via {session.probe.unique_id}")
            FileProgrammer(session).program(str(path))
            session.target.reset()
    except PyocdError as e:
        pack = f"; install its pack: pyocd pack install {board.pyocd_pack}" if board.pyocd_pack else ""
        raise UserError(f"pyocd could not flash {board.name} (target {board.pyocd_target}): {e}{pack}") from None
    return {"board": board.name, "file": str(path), "probe": session.probe.unique_id}


def read_serial(port, baud=115200, timeout=60.0):
    """Text from a serial port until the S4OP summary (or fault) line; FirmwareTimeout otherwise."""
    try:
        import serial
    except ImportError:
        raise UserError("pyserial is not installed; install it: pip install pyserial") from None
    try:
        ser = serial.Serial(port, baudrate=baud, timeout=0.2)
    except (serial.SerialException, OSError) as e:
        raise UserError(f"cannot open serial port {port}: {e}; check the device name and permissions (dialout group)") from None
    chunks, deadline = [], time.monotonic() + timeout
    with ser:
        while time.monotonic() < deadline:
            line = ser.readline().decode(errors="replace")
            if not line:
                continue
            chunks.append(line)
            if line.lstrip().startswith(("S4OP summary", "S4OP fault")) and line.endswith("\n"):
                return "".join(chunks)
    raise FirmwareTimeout(f"no S4OP summary on {port} within {timeout:g} s ({len(chunks)} lines read); "
                          f"is the benchmark firmware running and printing to this port at {baud} baud? reset the board")
