"""Classic long-sequence benchmarks, read from files the user downloaded into `root` (never fetched).

smnist: the MNIST IDX files, each image a length rows*cols pixel sequence (raw 0..255 values; the
stored normalization maps them straight to normalized input, the same as pixels/255 then normalized).
listops: the LRA ListOps TSVs, tokenized with a fixed vocabulary and padded/truncated to max_len.
"""

import gzip
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from .core import Raw

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
LISTOPS_FILES = ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv")

# pad=0, the digits, the operators and the closing bracket. LRA drops '(' and ')'.
LISTOPS_VOCAB = {tok: i for i, tok in enumerate(["<pad>", *"0123456789", "[MIN", "[MAX", "[MED", "[SM", "]"])}
LISTOPS_MAX_LEN = 2000


def _find(root, names, what, allow_gz=False):
    """The paths of `names` under root; a UserError naming all of them if any is missing."""
    hint = f"{what} needs --root DIR holding {', '.join(names)}{' (or .gz)' if allow_gz else ''}; download them yourself, nothing is fetched"
    if root is None:
        raise UserError(hint)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"--root {root} is not a directory; {hint}")
    found = []
    for n in names:
        cands = [root / n] + ([root / f"{n}.gz"] if allow_gz else [])
        hit = next((p for p in cands if p.is_file()), None)
        if hit is None:
            raise UserError(f"{root / n} is missing; {hint}")
        found.append(hit)
    return found


def read_idx(path, magic):
    """An IDX file (big-endian header: magic, then one int32 per dimension) -> uint8 array."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path} ({e}); download the file again")
    ndim = {2049: 1, 2051: 3}[magic]
    head = 4 * (1 + ndim)
    if len(raw) < head or int.from_bytes(raw[:4], "big") != magic:
        raise UserError(f"{path} is not an IDX file with magic {magic}; pass the original MNIST file")
    dims = [int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim)]
    if len(raw) - head != int(np.prod(dims)):
        raise UserError(f"{path} holds {len(raw) - head} bytes of data but its header says {dims}; download the file again")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_smnist(root):
    tr_x, tr_y, te_x, te_y = _find(root, MNIST_FILES, "smnist", allow_gz=True)
    parts = []
    for xp, yp in ((tr_x, tr_y), (te_x, te_y)):
        x, y = read_idx(xp, 2051), read_idx(yp, 2049)
        if len(x) != len(y):
            raise UserError(f"{xp.name} has {len(x)} images but {yp.name} has {len(y)} labels; use files from the same MNIST release")
        parts += [x.reshape(len(x), -1, 1), y.astype(np.int64)]  # uint8 kept until the train cap is applied
    return Raw(*parts, classes=list(range(10)))


def tokenize(source, max_len=LISTOPS_MAX_LEN, where=""):
    """One expression -> uint8 token ids, truncated/zero-padded to max_len (uint8 keeps the full set small)."""
    toks = source.replace("(", " ").replace(")", " ").split()[:max_len]
    out = np.zeros(max_len, dtype=np.uint8)
    try:
        out[: len(toks)] = [LISTOPS_VOCAB[t] for t in toks]
    except KeyError as e:
        raise UserError(f"{where}unknown ListOps token {e.args[0]!r}; pass the LRA ListOps files unmodified")
    return out


def read_listops(path, max_len):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as text ({e}); pass the LRA ListOps TSV file")
    lines = [(n, l) for n, l in enumerate(text.splitlines(), 1) if l.strip()]
    if not lines or lines[0][1].split("\t")[:2] != ["Source", "Target"]:
        raise UserError(f"{path} does not start with the header 'Source<TAB>Target'; pass the LRA ListOps file")
    if len(lines) < 2:
        raise UserError(f"{path} has no examples; pass the LRA ListOps file")
    x = np.zeros((len(lines) - 1, max_len), dtype=np.uint8)
    y = np.zeros(len(lines) - 1, dtype=np.int64)
    for i, (n, line) in enumerate(lines[1:]):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[1].strip().isdigit() or int(fields[1]) > 9:
            raise UserError(f"{path} line {n} is not 'expression<TAB>answer 0-9'; pass the LRA ListOps file")
        x[i] = tokenize(fields[0], max_len, f"{path} line {n}: ")
        y[i] = int(fields[1])
    return x, y


def load_listops(root, max_len=LISTOPS_MAX_LEN):
    tr, va, te = (read_listops(p, max_len) for p in _find(root, LISTOPS_FILES, "listops"))
    return Raw(tr[0], tr[1], te[0], te[1], x_val=va[0], y_val=va[1], classes=list(range(10)), vocab_size=len(LISTOPS_VOCAB))
