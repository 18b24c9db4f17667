"""What every command module shares: the data arguments, typed argument parsers that reject out-
of-range values as usage errors, and `emit` (one JSON object with --json, else human text)."""

import argparse
import json


def emit(args, result, human):
    """Print a report: one JSON object with --json, else the human text `human(result)`."""
    if getattr(args, "json", False):
        print(json.dumps(result, default=_jsonable))
    else:
        print(human(result))


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def add_data_args(p, required=True):
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--dataset", help="a shipped dataset (see `s4op-micro datasets`)")
    g.add_argument("--data", help="your own .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--root", help="directory with the standard files of smnist / listops")
    p.add_argument("--max-train", type=at_least(1), help="use at most this many training sequences")


def data_source(args):
    """The data arguments of a command as keyword arguments of the stage functions."""
    return {"dataset": getattr(args, "dataset", None), "data": getattr(args, "data", None),
            "root": getattr(args, "root", None), "max_train": getattr(args, "max_train", None)}


def at_least(low, kind=int):
    """argparse type: a number >= low (an error names the range)."""
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not v >= low:
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be at least {low}")
        return v
    parse.__name__ = f"{kind.__name__} >= {low}"
    return parse


def in_range(low, high, low_open=False, high_open=True):
    """argparse type: a float in [low, high) (or with the given open ends)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be in {lo}{low:g}, {high:g}{hi}")
        return v
    parse.__name__ = "number"
    return parse


def positive(text):
    """argparse type: a float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text} is out of range: must be positive")
    return v
