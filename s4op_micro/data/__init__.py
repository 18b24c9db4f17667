"""Datasets: the shipped UCR/UEA sets and digits, sMNIST/ListOps from user files, and user .npz files.

Every source goes through the same steps (core.build): labels -> 0..K-1 in sorted order, optional
seeded train cap, a seeded (stratified when possible) validation split carved from train, and a
per-channel normalization fitted on the train part only.
"""

from pathlib import Path

from ..core.errors import UserError
from .core import Dataset, build, normalize
from .npz import load_npz
from .registry import REGISTRY

__all__ = ["Dataset", "load_dataset", "list_datasets", "normalize"]


def load_dataset(name=None, data=None, root=None, val_fraction=0.2, seed=0, max_train=None) -> Dataset:
    """A registry dataset by `name`, or the user's .npz at `data` (exactly one of them)."""
    if (name is None) == (data is None):
        raise UserError("pass exactly one of a dataset name (--dataset) or a .npz file (--data)")
    if data is not None:
        return build(Path(data).stem, load_npz(data), f"user file {data}", val_fraction, seed, max_train)
    key = str(name).lower()
    if key not in REGISTRY:
        raise UserError(f"unknown dataset {name!r}; pass one of {', '.join(REGISTRY)} or --data FILE.npz")
    entry = REGISTRY[key]
    source = entry.source.replace("--root", str(root)) if entry.needs_root and root else entry.source
    return build(key, entry.load(root), source, val_fraction, seed, max_train)


def list_datasets() -> list[dict]:
    """name, shape (n_train, n_test, L, C), n_classes, source, offline: bool - without loading any data."""
    return [
        {"name": name, "shape": [e.n_train, e.n_test, e.seq_len, e.n_channels], "n_classes": e.n_classes,
         "source": e.source, "offline": bool(e.available())}
        for name, e in REGISTRY.items()
    ]
