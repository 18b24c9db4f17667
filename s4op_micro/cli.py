"""The `s4op-micro` command line. Each pipeline stage module registers its own subcommands.

A stage module exposes `register(subparsers)`, which adds its subparsers and sets `func` on each
(func(args) -> int exit code). Errors meant for the user are `UserError`: one line, exit 2.
"""

import argparse
import importlib
import json
import os
import sys

from . import __version__
from .errors import UserError

# Stage modules, in pipeline order. Each has register(subparsers).
COMMAND_MODULES = [
    "s4op_micro.data",
    "s4op_micro.train",
    "s4op_micro.import_command",
    "s4op_micro.prune",
    "s4op_micro.export.commands",
    "s4op_micro.boards",
    "s4op_micro.firmware",
    "s4op_micro.pipeline",
]


def emit(args, result, human):
    """Print a report: one JSON object with --json, else the human text `human(result)`."""
    if getattr(args, "json", False):
        print(json.dumps(result, default=_jsonable))
    else:
        print(human(result))


def _jsonable(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="s4op-micro",
        description="Train, prune, quantize and deploy S4/S4D models on Cortex-M microcontrollers.",
    )
    parser.add_argument("--version", action="version", version=f"s4op-micro {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def limit_torch_threads():
    """Small SSMs on a few CPU cores run far faster single-threaded: training the arrowhead default
    took 100 s with torch's default threads and 8 s with one on a 2-core machine. S4OP_THREADS
    raises it for big models."""
    import torch

    torch.set_num_threads(int(os.environ.get("S4OP_THREADS", "1")))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    limit_torch_threads()
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


if __name__ == "__main__":
    sys.exit(main())
