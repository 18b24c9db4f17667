"""The checks that several stages make, one function and one wording each: which board, whether
QEMU emulates it, whether a model fits it, the coefficient width. Every failure is a UserError
(one line, exit 2) that names the problem and what to type instead."""

import json
from pathlib import Path

from .boards import BOARDS, get_board
from .errors import UserError

COEFF_BITS = (8, 16)


def coeff_bits(bits):
    """The recurrence coefficient width, 8 or 16."""
    if bits not in COEFF_BITS:
        raise UserError(f"--coeff-bits must be 8 or 16, not {bits}")
    return bits


def recorded_board(export_dir):
    """The board an export directory was made for (DIR/model.json's "board"), or None."""
    meta = Path(export_dir) / "model.json"
    if not meta.is_file():
        return None
    try:
        rec = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{meta} is corrupt (not JSON); re-run `s4op-micro export` or pass --board") from None
    return rec.get("board") if isinstance(rec, dict) else None


def resolve_board(name=None, export_dir=None):
    """The board named, else the one DIR was exported for."""
    name = name or (recorded_board(export_dir) if export_dir is not None else None)
    if not name:
        where = f"and {Path(export_dir) / 'model.json'} records none" if export_dir is not None else ""
        raise UserError(f"no --board given {where}; pass --board (see `s4op-micro boards`)".replace("  ", " "))
    return get_board(name)


def emulated_board(board, for_what="emulate it"):
    """The board itself when QEMU emulates it; else a UserError naming the emulated core of the same cpu."""
    board = get_board(board)
    if board.emulated:
        return board
    same = [b.name for b in BOARDS.values() if b.emulated and b.cpu == board.cpu]
    hint = (f"pass --board {same[0]} (the same {board.cpu} core, emulated), or run it on the board "
            "(s4op-micro flash + profile --port)" if same else
            f"emulated cores: {', '.join(b for b, v in BOARDS.items() if v.emulated)}")
    raise UserError(f"board {board.name} has no QEMU machine to {for_what}; {hint}")


def check_fits(board, flash_bytes, ram_bytes, what="the model", detail="", coeff_bits_used=None):
    """UserError with the figures when flash_bytes or ram_bytes exceed the board's budget.
    detail: how the figures were made (e.g. "measured: text + data"); coeff_bits_used: suggest 8
    only when 16 is in use."""
    board = get_board(board)
    over = []
    if flash_bytes > board.flash_bytes:
        over.append(f"{flash_bytes} B flash > {board.flash_bytes} B")
    if ram_bytes > board.ram_bytes:
        over.append(f"{ram_bytes} B RAM > {board.ram_bytes} B")
    if not over:
        return
    fixes = "prune or shrink the model" + (", use --coeff-bits 8" if coeff_bits_used == 16 else "") + \
        ", or pick a bigger board"
    raise UserError(f"{what} does not fit {board.name}: {' and '.join(over)}" + (f" ({detail})" if detail else "")
                    + f"; {fixes}")
