"""The named datasets: how to load each and its known facts (listed without loading anything)."""

from dataclasses import dataclass
from typing import Callable

from . import classic, ucr
from .digits import load_digits_seq


@dataclass(frozen=True)
class Entry:
    load: Callable  # root -> Raw
    n_train: int  # official train size, before the validation split
    n_test: int
    seq_len: int
    n_channels: int
    n_classes: int
    source: str
    available: Callable  # () -> bool: usable without any download
    needs_root: bool = False


def _ucr(problem, n_train, n_test, seq_len, n_channels, n_classes, archive="UCR"):
    return Entry(lambda root: ucr.load_ucr(problem), n_train, n_test, seq_len, n_channels, n_classes,
                 f"{archive} {problem} (bundled with sktime)", lambda: ucr.available(problem))


REGISTRY = {
    "gunpoint": _ucr("GunPoint", 50, 150, 150, 1, 2),
    "arrowhead": _ucr("ArrowHead", 36, 175, 251, 1, 3),
    "basicmotions": _ucr("BasicMotions", 40, 40, 100, 6, 4, archive="UEA"),
    "digits": Entry(lambda root: load_digits_seq(), 1437, 360, 64, 1, 10,
                    "scikit-learn 8x8 digits (bundled), row-major pixels, seeded stratified 80/20 split", lambda: True),
    "smnist": Entry(classic.load_smnist, 60000, 10000, 784, 1, 10,
                    "sequential MNIST from the IDX files in --root (downloaded by you)", lambda: False, needs_root=True),
    "listops": Entry(classic.load_listops, 96000, 2000, classic.LISTOPS_MAX_LEN, 1, 10,
                     "LRA ListOps basic_*.tsv in --root (downloaded by you), tokens", lambda: False, needs_root=True),
}
