"""scikit-learn's 8x8 digits (shipped with scikit-learn) as length-64 row-major pixel sequences."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .core import Raw

SPLIT_SEED = 0  # a fixed test set, whatever seed training uses


def load_digits_seq():
    d = load_digits()
    x = d.images.reshape(len(d.images), 64, 1).astype("float32")  # row-major: pixel (r, c) at step 8r + c
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=0.2, random_state=SPLIT_SEED, stratify=d.target)
    return Raw(x_tr, y_tr, x_te, y_te)
