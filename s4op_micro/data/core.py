"""The Dataset record and the steps every source shares: label encoding, the train cap, the
validation split and the per-channel normalization (fitted on the train part only)."""

from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import train_test_split

from ..core.errors import UserError


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray  # float32 (n, L, C) normalized, or int64 (n, L) tokens
    y_train: np.ndarray  # int64 in [0, n_classes)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    n_channels: int
    seq_len: int
    vocab_size: int | None
    normalization: dict
    source: str
    class_names: list[str] = field(default_factory=list)


@dataclass
class Raw:
    """What a source loader hands back: un-normalized x (n, L, C) or int tokens (n, L), original labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    x_val: np.ndarray | None = None  # a source's own validation set (listops); else carved from train
    y_val: np.ndarray | None = None
    classes: list | None = None  # fixed class list; default: the sorted train labels
    vocab_size: int | None = None


def sorted_classes(labels):
    """Unique labels in sorted order; numerically when they all read as numbers ('2' before '10')."""
    uniq = np.unique(labels).tolist()
    try:
        return sorted(uniq, key=float)
    except (TypeError, ValueError):
        return sorted(uniq, key=str)


def encode(labels, classes, what):
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({c for c in labels.tolist() if c not in index}, key=str)
    if unknown:
        raise UserError(f"{what} labels {unknown[:5]} do not occur in the train labels {[str(c) for c in classes][:10]}; "
                        "every class must have training examples")
    return np.array([index[c] for c in labels.tolist()], dtype=np.int64)


def split(y, size, seed):
    """Indices (keep, take) with `size` taken at random; stratified when every class can be on both sides."""
    idx = np.arange(len(y))
    _, counts = np.unique(y, return_counts=True)
    strat = y if counts.min() >= 2 and min(size, len(y) - size) >= len(counts) else None
    keep, take = train_test_split(idx, test_size=size, random_state=seed, stratify=strat)
    return np.sort(keep), np.sort(take)


def fit_normalization(x):
    """Per-channel mean/std over (n, L), accumulated in float64 chunks so big sets stay small in memory."""
    c = x.shape[2]
    total, sq, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), 4096):
        chunk = x[i : i + 4096].astype(np.float64)
        total += chunk.sum(axis=(0, 1))
        count += chunk.shape[0] * chunk.shape[1]
    mean = total / count
    for i in range(0, len(x), 4096):
        sq += ((x[i : i + 4096].astype(np.float64) - mean) ** 2).sum(axis=(0, 1))
    std = np.sqrt(sq / count)
    std[std < 1e-8] = 1.0  # a constant channel: only shift it
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def normalize(x, normalization):
    """Apply a stored normalization to raw (n, L) or (n, L, C) input -> float32 (n, L, C)."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise UserError(f"input has shape {x.shape}; pass sequences as (n, L) or (n, L, C)")
    x = x.astype(np.float32)  # always a copy, normalized in place below
    if not normalization:
        return x
    mean = np.asarray(normalization["mean"], dtype=np.float32)
    std = np.asarray(normalization["std"], dtype=np.float32)
    if x.shape[2] != len(mean):
        raise UserError(f"input has {x.shape[2]} channels but the normalization has {len(mean)}; pass data with that many channels")
    x -= mean
    x /= std
    return x


def build(name, raw, source, val_fraction=0.2, seed=0, max_train=None):
    """Raw splits -> Dataset: encode labels, cap train, carve validation, fit and apply normalization.
    val_fraction 0: no validation set (every training sequence trains; empty x_val, y_val)."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"val_fraction {val_fraction} is out of range; pass a fraction in [0, 1), e.g. 0.2")
    if max_train is not None and max_train < 2:
        raise UserError(f"--max-train {max_train} is too small; pass at least 2")
    classes = raw.classes if raw.classes is not None else sorted_classes(raw.y_train)
    if len(classes) < 2:
        raise UserError(f"the training labels hold {len(classes)} class{'es' if len(classes) != 1 else ''} "
                        f"({', '.join(map(str, classes)) or 'none'}); a classifier needs two or more")
    y_train = encode(raw.y_train, classes, "train")
    y_test = encode(raw.y_test, classes, "test")
    x_train = raw.x_train
    if raw.x_val is None:
        if max_train is not None and max_train < len(y_train):
            keep, _ = split(y_train, len(y_train) - max_train, seed)
            x_train, y_train = x_train[keep], y_train[keep]
        if val_fraction == 0:
            x_val, y_val = x_train[:0], y_train[:0]
        else:
            n_val = max(1, int(round(len(y_train) * val_fraction)))
            if len(y_train) - n_val < 1:
                raise UserError(f"only {len(y_train)} training sequences; need at least 2 to carve a validation split")
            tr, va = split(y_train, n_val, seed)
            x_val, y_val = x_train[va], y_train[va]
            x_train, y_train = x_train[tr], y_train[tr]
    else:
        x_val, y_val = raw.x_val, encode(raw.y_val, classes, "validation")
        if max_train is not None and max_train < len(y_train):
            _, take = split(y_train, max_train, seed)
            x_train, y_train = x_train[take], y_train[take]
            n_val = max(1, int(round(max_train * val_fraction)))
            if n_val < len(y_val):
                _, take = split(y_val, n_val, seed)
                x_val, y_val = x_val[take], y_val[take]
        if val_fraction == 0:
            x_val, y_val = x_val[:0], y_val[:0]
    tokens = raw.vocab_size is not None
    if tokens:
        norm = {}
        x_train, x_val, x_test = (np.asarray(a, dtype=np.int64) for a in (x_train, x_val, raw.x_test))
    else:
        norm = fit_normalization(x_train)
        x_train, x_val, x_test = (normalize(a, norm) for a in (x_train, x_val, raw.x_test))
    return Dataset(
        name=name, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, x_test=x_test, y_test=y_test,
        n_classes=len(classes), n_channels=1 if tokens else x_train.shape[2], seq_len=x_train.shape[1],
        vocab_size=raw.vocab_size, normalization=norm, source=source, class_names=[str(c) for c in classes],
    )
