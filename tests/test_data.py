"""Datasets: the shipped sets' known shapes, train-only normalization, the validation split, user
.npz files and their errors, the sMNIST IDX and ListOps TSV readers, and `s4op-micro datasets`."""

import gzip
import json

import numpy as np
import pytest

from s4op_micro.cli import main
from s4op_micro.data import Dataset, list_datasets, load_dataset, normalize
from s4op_micro.data.classic import LISTOPS_VOCAB, tokenize
from s4op_micro.data.core import fit_normalization, split
from s4op_micro.data.digits import load_digits_seq
from s4op_micro.data.ucr import load_ucr
from s4op_micro.core.errors import UserError

# name: (official n_train, n_test, L, C, classes) - the published UCR/UEA facts; digits has 1797 in all.
SHIPPED = {
    "gunpoint": (50, 150, 150, 1, 2),
    "arrowhead": (36, 175, 251, 1, 3),
    "basicmotions": (40, 40, 100, 6, 4),
    "digits": (1437, 360, 64, 1, 10),
}


@pytest.fixture(scope="module")
def shipped():
    return {name: load_dataset(name) for name in SHIPPED}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_shapes_and_classes(shipped, name):
    n_train, n_test, L, C, K = SHIPPED[name]
    d = shipped[name]
    assert isinstance(d, Dataset) and d.name == name
    assert len(d.x_train) + len(d.x_val) == n_train and len(d.x_test) == n_test
    assert len(d.x_val) == round(0.2 * n_train)
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val), (d.x_test, d.y_test)):
        assert x.dtype == np.float32 and x.shape[1:] == (L, C) and len(y) == len(x)
        assert y.dtype == np.int64 and y.min() >= 0 and y.max() < K
    assert (d.n_classes, d.seq_len, d.n_channels, d.vocab_size) == (K, L, C, None)
    assert len(d.class_names) == K and set(d.y_test.tolist()) == set(range(K))
    assert set(d.y_val.tolist()) == set(range(K))  # stratified: every class in validation
    assert len(d.normalization["mean"]) == len(d.normalization["std"]) == C
    facts = {e["name"]: e for e in list_datasets()}[name]
    assert facts["shape"] == [n_train, n_test, L, C] and facts["n_classes"] == K and facts["offline"] is True


def test_digits_total_and_class_names(shipped):
    d = shipped["digits"]
    assert len(d.x_train) + len(d.x_val) + len(d.x_test) == 1797
    assert d.class_names == [str(i) for i in range(10)]
    assert shipped["basicmotions"].class_names == ["badminton", "running", "standing", "walking"]
    assert shipped["gunpoint"].class_names == ["1", "2"]


@pytest.mark.parametrize("name", SHIPPED)
def test_train_part_is_standardized_per_channel(shipped, name):
    d = shipped[name]
    assert np.allclose(d.x_train.mean(axis=(0, 1)), 0, atol=1e-4)
    assert np.allclose(d.x_train.std(axis=(0, 1)), 1, atol=1e-4)


def test_normalization_fitted_on_train_part_only_and_reproducible(shipped):
    d, raw = shipped["digits"], load_digits_seq()
    y = raw.y_train.astype(np.int64)
    tr, va = split(y, round(0.2 * len(y)), 0)
    assert d.normalization == fit_normalization(raw.x_train[tr])
    assert d.normalization != fit_normalization(raw.x_train)  # validation rows left out
    np.testing.assert_array_equal(normalize(raw.x_train[va], d.normalization), d.x_val)
    np.testing.assert_array_equal(normalize(raw.x_test, d.normalization), d.x_test)
    # Multivariate: the stored values reproduce the test set from sktime's raw (n, C, L) arrays.
    bm, raw = shipped["basicmotions"], load_ucr("BasicMotions")
    np.testing.assert_array_equal(normalize(raw.x_test, bm.normalization), bm.x_test)
    assert raw.x_test.shape == (40, 100, 6)
    # (n, L) input gains the channel axis.
    gp = shipped["gunpoint"]
    assert normalize(load_ucr("GunPoint").x_test[:, :, 0], gp.normalization).shape == (150, 150, 1)


def test_normalize_rejects_wrong_channels_or_rank(shipped):
    norm = shipped["basicmotions"].normalization
    with pytest.raises(UserError, match="channels"):
        normalize(np.zeros((2, 10, 3)), norm)
    with pytest.raises(UserError, match=r"\(n, L\)"):
        normalize(np.zeros(10), norm)


def _ids_npz(tmp_path, n=40):
    """An npz whose sequence i holds the value i, so splits can be traced back to rows."""
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None], 5, axis=1)
    y = np.arange(n) % 4
    path = tmp_path / "ids.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    return path


def _row_ids(d, x):
    return set(np.rint(x[:, 0, 0] * d.normalization["std"][0] + d.normalization["mean"][0]).astype(int).tolist())


def test_val_split_is_deterministic_and_disjoint(tmp_path):
    path = _ids_npz(tmp_path)
    a, b, c = load_dataset(data=path, seed=0), load_dataset(data=path, seed=0), load_dataset(data=path, seed=1)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    tr, va = _row_ids(a, a.x_train), _row_ids(a, a.x_val)
    assert not tr & va and tr | va == set(range(40)) and len(va) == 8
    assert _row_ids(c, c.x_val) != va  # another seed, another split
    assert sorted(np.bincount(a.y_val).tolist()) == [2, 2, 2, 2]  # stratified


def test_val_fraction_zero_trains_on_every_sequence(tmp_path):
    path = _ids_npz(tmp_path)
    d = load_dataset(data=path, val_fraction=0)
    assert _row_ids(d, d.x_train) == set(range(40)) and len(d.x_val) == 0 and len(d.y_val) == 0
    assert d.x_val.shape[1:] == d.x_train.shape[1:]
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset(data=path, val_fraction=-0.1)


def test_max_train_caps_with_a_seeded_subsample(tmp_path):
    path = _ids_npz(tmp_path)
    a, b = load_dataset(data=path, max_train=20), load_dataset(data=path, max_train=20)
    assert len(a.x_train) + len(a.x_val) == 20 and len(a.x_val) == 4 and len(a.x_test) == 8
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert a.n_classes == 4
    d = load_dataset("digits", max_train=100)
    assert len(d.x_train) + len(d.x_val) == 100 and len(d.x_test) == 360


@pytest.mark.parametrize("shape", [(30, 12), (30, 12, 3)])
def test_npz_round_trip(tmp_path, shape):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=shape)
    y = np.array([7, 3] * 15)  # non-contiguous labels -> 0..K-1 in sorted order
    xt, yt = rng.normal(3.0, 2.0, size=(6, *shape[1:])), np.array([3, 7, 7, 3, 3, 7])
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    d = load_dataset(data=str(path))
    C = shape[2] if len(shape) == 3 else 1
    assert (d.name, d.seq_len, d.n_channels, d.n_classes, d.vocab_size) == ("mine", 12, C, 2, None)
    assert d.class_names == ["3", "7"] and d.y_test.tolist() == [0, 1, 1, 0, 0, 1]
    assert d.x_train.shape == (24, 12, C) and d.x_val.shape == (6, 12, C)
    np.testing.assert_allclose(normalize(xt, d.normalization), d.x_test, rtol=1e-6)
    np.testing.assert_allclose(d.x_test * np.float32(d.normalization["std"]) + np.float32(d.normalization["mean"]),
                               xt.reshape(6, 12, C), rtol=1e-5)


GOOD = dict(x_train=np.zeros((6, 5)), y_train=np.array([0, 1] * 3), x_test=np.zeros((2, 5)), y_test=np.array([0, 1]))


def _write(tmp_path, **changes):
    arrays = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


NPZ_ERRORS = {
    "missing keys": (dict(y_train=None, x_test=None), ["y_train", "x_test"]),
    "rank 1": (dict(x_train=np.zeros(6)), ["x_train", "(n, L)"]),
    "rank 4": (dict(x_test=np.zeros((2, 5, 1, 1))), ["x_test", "(n, L, C)"]),
    "nan": (dict(x_train=np.array([[np.nan] * 5] + [[0.0] * 5] * 5)), ["x_train", "NaN"]),
    "inf": (dict(x_test=np.array([[np.inf] * 5, [0.0] * 5])), ["x_test", "inf"]),
    "float labels": (dict(y_train=np.array([0, 0.5, 1, 0, 1, 0])), ["y_train", "integer"]),
    "string labels": (dict(y_train=np.array(list("ababab"))), ["y_train", "integer"]),
    "negative labels": (dict(y_test=np.array([0, -1])), ["y_test", "negative"]),
    "label count": (dict(y_train=np.array([0, 1])), ["y_train", "one label per sequence"]),
    "length mismatch": (dict(x_test=np.zeros((2, 4))), ["(5, 1)", "(4, 1)", "equal lengths"]),
    "channel mismatch": (dict(x_test=np.zeros((2, 5, 3))), ["(5, 1)", "(5, 3)", "channels"]),
    "unseen test label": (dict(y_test=np.array([0, 5])), ["[5]", "y_train"]),
    "empty": (dict(x_test=np.zeros((0, 5)), y_test=np.zeros(0, dtype=int)), ["x_test", "empty"]),
}


@pytest.mark.parametrize("case", NPZ_ERRORS)
def test_npz_errors_are_one_line_user_errors(tmp_path, case):
    changes, words = NPZ_ERRORS[case]
    with pytest.raises(UserError) as e:
        load_dataset(data=_write(tmp_path, **changes))
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_npz_file_errors(tmp_path):
    cases = {"missing.npz": None, "text.npz": b"just some text\n", "npy.npz": "npy", "objects.npz": "objects"}
    good = _write(tmp_path).read_bytes()
    cases["truncated.npz"] = good[: len(good) // 2]
    expect = {"missing.npz": "not found", "text.npz": "not an .npz archive or is corrupt", "npy.npz": "not an .npz",
              "truncated.npz": "corrupt", "objects.npz": "non-numeric"}
    for name, content in cases.items():
        path = tmp_path / name
        if content == "npy":
            with open(path, "wb") as f:
                np.save(f, np.zeros(3))
        elif content == "objects":
            np.savez(path, **{**GOOD, "x_train": np.array([[1, "a"]] * 6, dtype=object)})
        elif content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError) as e:
            load_dataset(data=path)
        assert expect[name] in str(e.value) and "\n" not in str(e.value), (name, str(e.value))


def test_name_and_argument_errors():
    with pytest.raises(UserError) as e:
        load_dataset("nope")
    assert "'nope'" in str(e.value) and all(n in str(e.value) for n in ("gunpoint", "digits", "smnist", "listops"))
    with pytest.raises(UserError, match="exactly one"):
        load_dataset()
    with pytest.raises(UserError, match="exactly one"):
        load_dataset("digits", data="x.npz")
    with pytest.raises(UserError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.0)
    assert load_dataset("GunPoint").name == "gunpoint"


# --- sMNIST from IDX files ----------------------------------------------------------------------

def _idx(path, magic, array, gz=False):
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def _mnist(root, n_train=12, n_test=4, gz=False):
    rng = np.random.default_rng(1)
    sets = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        img = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        lab = np.arange(n) % 3  # only some digits present: classes stay 0..9
        _idx(root / f"{prefix}-images-idx3-ubyte", 2051, img, gz)
        _idx(root / f"{prefix}-labels-idx1-ubyte", 2049, lab, gz)
        sets[prefix] = (img, lab)
    return sets


@pytest.mark.parametrize("gz", [False, True])
def test_smnist_reads_idx_files(tmp_path, gz):
    sets = _mnist(tmp_path, gz=gz)
    d = load_dataset("smnist", root=tmp_path)
    img, lab = sets["t10k"]
    assert d.x_test.shape == (4, 784, 1) and d.x_train.shape == (10, 784, 1) and d.x_val.shape == (2, 784, 1)
    assert d.n_classes == 10 and d.class_names == [str(i) for i in range(10)] and d.y_test.tolist() == lab.tolist()
    raw = d.x_test * np.float32(d.normalization["std"]) + np.float32(d.normalization["mean"])
    np.testing.assert_allclose(raw[:, :, 0], img.reshape(4, 784).astype(np.float32), atol=1e-3)  # row-major pixels
    np.testing.assert_array_equal(normalize(img.reshape(4, 784), d.normalization), d.x_test)
    assert np.allclose(d.x_train.mean(), 0, atol=1e-4) and np.allclose(d.x_train.std(), 1, atol=1e-4)
    # pixels/255 then standardized gives the same inputs.
    p = img.reshape(4, 784, 1) / 255.0
    tr = (d.x_train * np.float32(d.normalization["std"][0]) + np.float32(d.normalization["mean"][0])) / 255.0
    np.testing.assert_allclose((p - tr.mean()) / tr.std(), d.x_test, atol=1e-3)
    assert str(tmp_path) in d.source


def test_smnist_missing_and_corrupt_files(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("smnist")
    assert all(n in str(e.value) for n in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "download"))
    _mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte is missing"):
        load_dataset("smnist", root=tmp_path)
    _idx(tmp_path / "t10k-images-idx3-ubyte", 2049, np.zeros((4, 28, 28)))  # a labels magic on images
    with pytest.raises(UserError, match="magic 2051"):
        load_dataset("smnist", root=tmp_path)
    good = tmp_path / "t10k-images-idx3-ubyte"
    _idx(good, 2051, np.zeros((4, 28, 28)))
    good.write_bytes(good.read_bytes()[:-10])
    with pytest.raises(UserError, match="header"):
        load_dataset("smnist", root=tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        load_dataset("smnist", root=tmp_path / "nowhere")


# --- ListOps from LRA TSVs ----------------------------------------------------------------------

LINES = [
    ("( ( ( [MAX 2 ) 9 ) ( ( ( [MIN 4 ) 7 ) ] ) ) 0 ] )", 9),  # LRA's raw form of [MAX 2 9 [MIN 4 7 ] 0 ]
    ("[SM 3 4 ]", 7),
    ("[MED 1 5 8 ]", 5),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
]


def _listops(root):
    for part in ("train", "val", "test"):
        rows = LINES if part == "train" else LINES[: 2 if part == "val" else 3]
        (root / f"basic_{part}.tsv").write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows))


def test_listops_tokenizes_with_the_fixed_vocabulary(tmp_path):
    _listops(tmp_path)
    d = load_dataset("listops", root=tmp_path)
    v = LISTOPS_VOCAB
    want = [v["[MAX"], v["2"], v["9"], v["[MIN"], v["4"], v["7"], v["]"], v["0"], v["]"]]
    assert want == [12, 3, 10, 11, 5, 8, 15, 1, 15] and v["<pad>"] == 0 and d.vocab_size == 16
    assert d.x_test.dtype == np.int64 and d.x_test.shape == (3, 2000) and d.seq_len == 2000
    assert d.x_test[0, :9].tolist() == want and not d.x_test[0, 9:].any()  # '(' ')' dropped, zero padded
    assert d.x_test[0].tolist() == tokenize(LINES[3][0]).tolist()
    assert d.x_test[1, :4].tolist() == [v["[SM"], v["3"], v["4"], v["]"]]
    assert d.y_test.tolist() == [9, 7, 5] and d.n_classes == 10 and d.class_names == [str(i) for i in range(10)]
    assert d.y_val.tolist() == [9, 7] and len(d.x_train) == 4  # the val file is the validation set
    assert (d.normalization, d.n_channels) == ({}, 1)
    assert tokenize("[MAX 1 2 ]", max_len=3).tolist() == [12, 2, 3]  # truncated


def test_listops_errors(tmp_path):
    with pytest.raises(UserError) as e:
        load_dataset("listops", root=tmp_path)
    assert all(n in str(e.value) for n in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv", "download"))
    _listops(tmp_path)
    (tmp_path / "basic_test.tsv").write_text("Source\tTarget\n[MAX 1 [FOO 2 ] ]\t1\n")
    with pytest.raises(UserError, match=r"line 2.*'\[FOO'"):
        load_dataset("listops", root=tmp_path)
    (tmp_path / "basic_test.tsv").write_text("[MAX 1 ]\t1\n")
    with pytest.raises(UserError, match="header"):
        load_dataset("listops", root=tmp_path)


# --- CLI ------------------------------------------------------------------------------------------

def test_cli_datasets_json(capsys):
    assert main(["datasets", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_name = {d["name"]: d for d in out["datasets"]}
    assert set(by_name) == {*SHIPPED, "smnist", "listops"}
    assert by_name["basicmotions"]["shape"] == [40, 40, 100, 6] and by_name["basicmotions"]["offline"] is True
    assert by_name["smnist"]["offline"] is False and by_name["listops"]["n_classes"] == 10
    assert main(["datasets"]) == 0
    text = capsys.readouterr().out
    assert "gunpoint" in text and "sktime" in text
