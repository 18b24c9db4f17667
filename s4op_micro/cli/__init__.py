"""The `s4op-micro` command line: argparse on top of the typed stage functions. Nothing imports it.

Each command module (train, fit, prune, export, firmware, pipeline) has `register(subparsers)`, which
adds its subparsers and sets `func` (func(args) -> exit code). Exit codes: 0 done; 1 a run whose
scores differ from the integer reference, or an unexpected error (one line; S4OP_DEBUG=1 shows the
traceback); 2 bad input (UserError or a usage error: one line naming the fix); 130 Ctrl-C; 143 SIGTERM.
In every case no half-written output is left behind.
"""

import argparse
import os
import signal
import sys

from .. import __version__
from ..core.errors import UserError
from . import export, firmware, fit, pipeline, prune, train

COMMAND_MODULES = [train, fit, prune, export, firmware, pipeline]


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that every cleanup (temporary directories) runs."""


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser():
    parser = Parser(prog="s4op-micro",
                    description="Train, prune, quantize and deploy S4/S4D models on Cortex-M microcontrollers.")
    parser.add_argument("--version", action="version", version=f"s4op-micro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def limit_torch_threads():
    """Small SSMs on a few CPU cores run far faster single-threaded: training the arrowhead default
    took 100 s with torch's default threads and 8 s with one on a 2-core machine. S4OP_THREADS
    raises it for big models."""
    import torch

    torch.set_num_threads(int(os.environ.get("S4OP_THREADS", "1")))


def _glue_dash_values(argv):
    """`--opt -O3` -> `--opt=-O3`: argparse would read -O3 as an option of its own."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--opt" and i + 1 < len(argv) and argv[i + 1].startswith("-O"):
            out.append(f"--opt={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv=None):
    argv = _glue_dash_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:   # usage error (2, one line printed) or --help / --version (0)
        return e.code
    limit_torch_threads()
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"s4op-micro {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `s4op-micro info MODEL | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except Exception as e:
        if os.environ.get("S4OP_DEBUG"):
            raise
        where = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        print(f"s4op-micro {args.command}: internal error ({where}); rerun with S4OP_DEBUG=1 for the traceback "
              "and report it", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
