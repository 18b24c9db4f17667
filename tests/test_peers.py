"""The peer benchmark's own code (benchmarks/bench_peers.py) on a tiny generated dataset: the Keras
peers through the int8 converter and the TFLM runtime, their MAC formula, and MiniRocket."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_peers as bp  # noqa: E402

from s4op_micro.data.core import Dataset  # noqa: E402


def tiny_dataset(n_train=48, n_test=40, length=32, channels=1, seed=0):
    """Two classes told apart by frequency (2 vs 5 periods over the sequence), random phase, noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = np.arange(n) % 2
        t = np.linspace(0, 1, length, endpoint=False)[None, :, None]
        freq = np.where(y == 0, 2.0, 5.0)[:, None, None]
        phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
        x = np.sin(2 * np.pi * freq * t + phase) + 0.1 * rng.normal(size=(n, length, channels))
        return x.astype(np.float32), y.astype(np.int64)

    xtr, ytr = make(n_train)
    xte, yte = make(n_test)
    return Dataset(name="tiny", x_train=xtr, y_train=ytr, x_val=xtr[:0], y_val=ytr[:0], x_test=xte, y_test=yte,
                   n_classes=2, n_channels=channels, seq_len=length, vocab_size=None, normalization={}, source="test")


def test_mac_formula_equals_a_hand_count():
    cnn = bp.build_cnn(20, 2, 3)
    layers, total = bp.keras_macs(cnn)
    # conv1 valid: L_out 16, 5 taps, 2 -> 16 channels; pool -> 8; conv2: L_out 4, 5 taps, 16 -> 32; dense 32 -> 3
    assert [m for _, m in layers] == [16 * 5 * 2 * 16, 4 * 5 * 16 * 32, 32 * 3]
    assert total == 2560 + 10240 + 96
    fcn = bp.build_fcn(10, 1, 2)
    # 'same' padding: L_out = L = 10 for every conv
    assert bp.keras_macs(fcn)[1] == 10 * 8 * 1 * 32 + 10 * 5 * 32 * 64 + 10 * 3 * 64 * 32 + 32 * 2
    assert cnn.count_params() == (5 * 2 * 16 + 16) + (5 * 16 * 32 + 32) + (32 * 3 + 3)


@pytest.mark.parametrize("kind", ["cnn", "fcn"])
def test_keras_peer_int8_in_tflm_agrees_with_float(kind, tmp_path):
    data = tiny_dataset()
    path = tmp_path / f"{kind}.tflite"
    fig = bp.keras_peer(kind, data, seed=0, epochs=40, tflite_path=path)
    assert fig["flash_bytes"] == path.stat().st_size
    # the int8 model run by the real TFLM kernels predicts what the float Keras model predicts
    assert fig["int8_float_agreement"] >= 0.9, fig
    assert fig["float_accuracy"] >= 0.9, fig          # the task is easy: the recipe did learn
    assert abs(fig["accuracy"] - fig["float_accuracy"]) <= 1 - fig["int8_float_agreement"] + 1e-9
    assert fig["macs_per_sequence"] == fig["macs_per_decision"] == bp.keras_macs(
        bp.BUILDERS[kind](32, 1, 2))[1]
    assert fig["epochs"] == 40 and 1 <= fig["best_epoch"] <= 40
    # the measured arena really is the smallest that runs: 64 bytes less does not load and invoke
    from s4op_micro.measure import tflm_runtime as rt

    model = path.read_bytes()
    assert rt._runs(model, fig["ram_bytes"]) and not rt._runs(model, fig["ram_bytes"] - 64)
    # BatchNorm folded into the convolutions (the MAC count assumes it): no elementwise ops left
    from s4op_micro.codegen.tflm_graph import builtin_names

    ops = set(builtin_names(model))
    assert "CONV_2D" in ops and "FULLY_CONNECTED" in ops and not ops & {"MUL", "ADD", "SUB"}, ops


def test_the_lowest_training_loss_epoch_is_kept():
    model = bp.build_cnn(16, 1, 2)
    best = bp.LowestLoss()
    snapshots = []
    for epoch, loss in enumerate([0.9, 0.4, 0.6, 0.5]):
        model.set_weights([w + epoch for w in model.get_weights()])  # a distinct set of weights per epoch
        snapshots.append([np.array(w) for w in model.get_weights()])
        best.update(epoch, loss, model)
    best.restore(model)
    assert best.epoch == 1 and best.loss == pytest.approx(0.4)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), snapshots[1]))


def test_learning_rate_halved_on_a_plateau():
    p = bp.HalveOnPlateau(patience=3, floor=0.25)
    lrs, lr = [], 1.0
    for loss in [5, 4, 4, 4, 4, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3]:
        lr = p.step(loss, lr)
        lrs.append(lr)
    # 3 epochs without improvement -> halved; again 3 later; improvement resets; never below the floor
    assert lrs[:8] == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25]
    assert lrs[8:] == [0.25] * 9


def test_training_recipe_budget_and_progress():
    data = tiny_dataset(n_train=16)
    info = bp.train_keras(bp.build_cnn(32, 1, 2), data.x_train, data.y_train, epochs=5, seed=1)
    assert info["epochs"] == 5 and 1 <= info["best_epoch"] <= 5 and np.isfinite(info["best_train_loss"])
    # trained longer on an easy task, the kept weights are well below chance (ln 2 = 0.69) on the
    # training set when evaluated afresh (not only in the running loss the recipe recorded)
    info = bp.train_keras(model := bp.build_cnn(32, 1, 2), data.x_train, data.y_train, epochs=150, seed=1)
    import keras

    loss = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
        data.y_train, model.predict(data.x_train, verbose=0)))
    assert info["best_train_loss"] < 0.5 and loss < 0.5, (info, loss)
    # the update cap: 48 sequences in batches of 16 are 3 updates per epoch; 10 updates -> 4 epochs
    info = bp.train_keras(bp.build_cnn(32, 1, 2), tiny_dataset().x_train, tiny_dataset().y_train, epochs=50, seed=1,
                          max_updates=10, batch_size=16)
    assert info["epochs"] == 4
    # the default batch: min(n / 10, 16) sequences -> 48 sequences in batches of 4, 12 updates per epoch
    assert [bp.batch_size_for(n) for n in (5, 36, 48, 1437)] == [1, 3, 4, 16]
    info = bp.train_keras(bp.build_cnn(32, 1, 2), tiny_dataset().x_train, tiny_dataset().y_train, epochs=50, seed=1,
                          max_updates=30)
    assert info["batch_size"] == 4 and info["epochs"] == 3


def test_minirocket_on_tiny_data():
    data = tiny_dataset(channels=1)
    fig = bp.minirocket_peer(data, seed=0)
    assert fig["accuracy"] >= 0.9
    assert fig["features"] == 9996
    # univariate: 84 kernels per dilation, each 9 taps over L samples; then a binary ridge (one output)
    n_dilations = fig["macs_per_sequence"] - 9996
    assert n_dilations % (84 * 9 * 32) == 0 and n_dilations > 0
