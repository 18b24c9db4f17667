"""Where the Jinja templates and the static firmware files are: at the top of a source checkout
(editable install), or inside the installed package (wheel)."""

from pathlib import Path

_PKG = Path(__file__).resolve().parent.parent   # s4op_micro/


def _find(top_name, packaged_name):
    for candidate in (_PKG.parent / top_name, _PKG / packaged_name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"s4op-micro installation is missing its {top_name}/ directory")


def templates_dir():
    return _find("templates", "_templates")


def firmware_dir():
    return _find("firmware", "_firmware")
