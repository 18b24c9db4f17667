"""Peers: a small Keras 1D-CNN and an FCN deployed int8 in TensorFlow Lite Micro, MiniRocket (float),
and our deployed S4D model, on every shipped dataset, over several seeds.

    python benchmarks/bench_peers.py [--quick] [--datasets gunpoint,digits] [--seeds 0,1,2] [--workdir DIR]

    -> benchmarks/results/peers.json, peers.md (the table), peers.png (accuracy vs MACs per sequence)

Data: s4op_micro.data.load_dataset (the project's splits and per-channel normalization). The peers
train on all training data (train + validation: val_fraction 0, normalization fitted on it); the
test set is the official one, the same as ours.

Peers (our own Keras code, trained here):
  cnn  Conv1D(16, k5, valid) -> ReLU -> MaxPool(2) -> Conv1D(32, k5, valid) -> ReLU
       -> GlobalAveragePooling -> Dense(classes)           (2,754 parameters on one channel, 2 classes)
  fcn  [Conv1D(f, k, same) -> BatchNorm -> ReLU] for (f, k) = (32, 8), (64, 5), (32, 3)
       -> GlobalAveragePooling -> Dense(classes)           (Wang et al. 2017's FCN at a quarter width)
  Recipe (small data): Adam 1e-3, batches of min(n/10, 16) sequences (Fawaz et al. 2019), cross-
  entropy; up to EPOCHS epochs capped at MAX_UPDATES gradient updates (the time cap: on digits' 1,437
  sequences the CNN gets 446 epochs and the FCN 112 (its training loss is ~0.003 by then); on the
  UCR sets the epoch count binds); learning rate
  halved when the training loss has not improved for 50 epochs (floor 1e-4); the weights of the epoch
  with the lowest training loss are kept (no validation set is held out).
  Deployment: tf.lite.TFLiteConverter, full int8 (Optimize.DEFAULT, representative dataset = up to
  200 training sequences, TFLITE_BUILTINS_INT8, int8 input and output), run in the tflite-micro
  Python package's interpreter (the real TFLM reference kernels), one Invoke per test sequence, with
  the measured arena (+ the project's margin) as its arena. Flash = the .tflite's bytes; RAM = the
  smallest arena it runs in (tflm_runtime.measure_arena, on this 64-bit host). TFLM's interpreter and
  kernel code are not counted (as in bench_tflm).
  MACs per sequence, from the layer shapes: Conv1D L_out * k * C_in * C_out (L_out = L - k + 1 for
  valid padding; L for same padding, whose zero taps are counted); Dense C_in * C_out; BatchNorm
  (folded into the conv by the converter), bias, ReLU, max pooling and average pooling count 0.
  MACs per streaming decision: the CNN is re-run on a sliding window of the training length L (one
  decision per new sample), so a decision costs one whole window: MACs per decision = MACs per
  sequence. (A streaming CNN also has to keep the last L samples, L * C bytes, beside the arena.)
MiniRocket (sktime MiniRocket / MiniRocketMultivariate, 10,000 kernels -> 9,996 features, then
  StandardScaler(with_mean=False) and RidgeClassifierCV(alphas=logspace(-3, 3, 10)): sktime's
  RocketClassifier pipeline) in float64: the accuracy anchor. Its MACs per sequence are counted
  naively: 9 * L * (channels of the kernel) per kernel and dilation, plus features * outputs for the
  ridge; its own implementation shares sums and needs about a third of the convolution's operations.
  Its "flash" is its float32 parameters (biases, scaler, ridge); it is not deployed here.
Ours: one run of `s4op-micro fit --dataset D --seed S --board cortex-m7 --max-macs-per-step 2*CNN/L
  --max-flash 2*CNN.tflite` per dataset and seed, see deployed_figures(): the shape (width, state
  size, depth) chosen by 3-fold cross-validation on the training set within twice the CNN's MACs per
  sequence and twice its .tflite bytes, the recurrence coefficient width (8 or 16 bits) by the int8 integer
  reference's accuracy on the same folds, the two best points cross-validated on 3 repetitions of the folds,
  trained on all training data (`ours-fit`). Accuracy = firmware in QEMU on the whole test set; flash/RAM = the model's
  code + weights and its static state (arm-none-eabi-gcc -Os); MACs per step from the export report;
  instructions per step = QEMU's count. The model is causal with a running-mean pool: one step is one
  streaming decision, and a sequence costs L steps.
"""

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import RESULTS, write_results  # noqa: E402

SHIPPED = ("gunpoint", "arrowhead", "basicmotions", "digits")
QUICK_DATASETS = ("gunpoint", "basicmotions")
KINDS = ("cnn", "fcn", "minirocket", "ours-fit")
FIT_WORKERS = 2
EPOCHS = {"cnn": 1000, "fcn": 1000}
QUICK_EPOCHS = {"cnn": 200, "fcn": 100}
MAX_UPDATES = {"cnn": 40_000, "fcn": 10_000}   # the time cap, in gradient updates
MAX_BATCH = 16
LR, LR_FLOOR, PLATEAU = 1e-3, 1e-4, 50
REP_SEQUENCES = 200


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# --- the Keras peers -----------------------------------------------------------------------------

def keras_modules():
    """tensorflow and keras, with TensorFlow on one thread (shared 2-core machines; one is faster here)."""
    import tensorflow as tf
    import keras

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialized: keep what it has
        pass
    return tf, keras


def build_cnn(seq_len, n_channels, n_classes):
    _, keras = keras_modules()
    L = keras.layers
    return keras.Sequential([keras.Input((seq_len, n_channels)), L.Conv1D(16, 5, activation="relu"), L.MaxPooling1D(2),
                             L.Conv1D(32, 5, activation="relu"), L.GlobalAveragePooling1D(), L.Dense(n_classes)],
                            name="cnn")


def build_fcn(seq_len, n_channels, n_classes):
    _, keras = keras_modules()
    L = keras.layers
    x = inp = keras.Input((seq_len, n_channels))
    for filters, k in ((32, 8), (64, 5), (32, 3)):
        x = L.ReLU()(L.BatchNormalization()(L.Conv1D(filters, k, padding="same")(x)))
    return keras.Model(inp, L.Dense(n_classes)(L.GlobalAveragePooling1D()(x)), name="fcn")


BUILDERS = {"cnn": build_cnn, "fcn": build_fcn}


def keras_macs(model):
    """Multiply-accumulates of one forward pass over one whole sequence, from the layer shapes
    (see the module docstring): [(layer name, MACs)] for the layers that have any, and the total."""
    per_layer = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv1D":
            k, c_in, c_out = layer.kernel.shape
            l_out = layer.output.shape[1]
            per_layer.append((layer.name, int(l_out * k * c_in * c_out)))
        elif kind == "Dense":
            c_in, c_out = layer.kernel.shape
            per_layer.append((layer.name, int(c_in * c_out)))
    return per_layer, sum(m for _, m in per_layer)


class LowestLoss:
    """Snapshots the weights at every new lowest training loss; restore() puts the lowest one's back."""

    def __init__(self):
        self.loss, self.epoch, self.weights = math.inf, -1, None

    def update(self, epoch, loss, model):
        if loss < self.loss:
            self.loss, self.epoch = float(loss), epoch
            self.weights = [np.array(w, copy=True) for w in model.get_weights()]

    def restore(self, model):
        if self.weights is not None:
            model.set_weights(self.weights)


class HalveOnPlateau:
    """Keras' ReduceLROnPlateau on the training loss (factor 0.5, min_delta 1e-4, no cooldown)."""

    def __init__(self, patience=PLATEAU, floor=LR_FLOOR, min_delta=1e-4):
        self.patience, self.floor, self.min_delta = patience, floor, min_delta
        self.best, self.wait = math.inf, 0

    def step(self, loss, lr):
        """The learning rate for the next epoch."""
        if loss < self.best - self.min_delta:
            self.best, self.wait = loss, 0
            return lr
        self.wait += 1
        if self.wait >= self.patience and lr > self.floor:
            self.wait = 0
            return max(lr * 0.5, self.floor)
        return lr


def batch_size_for(n):
    """min(n / 10, 16) sequences (Fawaz et al. 2019's rule for the UCR archive): a few dozen training
    sequences still give ~10 updates per epoch."""
    return max(1, int(min(n / 10, MAX_BATCH)))


def train_keras(model, x, y, epochs, seed, max_updates=10_000, batch_size=None):
    """The small-data recipe (module docstring): Adam, shuffled mini-batches, the learning rate halved
    on a plateau of the training loss, the lowest-training-loss epoch kept. One compiled function runs
    a whole epoch (Keras' fit() spends most of its time per epoch on a few tiny batches outside the
    graph). Returns what happened: epochs run, the kept epoch, its loss, seconds, learning rates."""
    tf, keras = keras_modules()
    keras.utils.set_random_seed(seed)
    n = len(x)
    batch_size = batch_size or batch_size_for(n)
    per_epoch = math.ceil(n / batch_size)
    epochs = max(1, min(epochs, math.ceil(max_updates / per_epoch)))
    xs, ys = tf.constant(x, tf.float32), tf.constant(y, tf.int64)
    opt = keras.optimizers.Adam(LR)
    opt.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def run_epoch(order):
        total = tf.constant(0.0)
        for b in tf.range(per_epoch):
            idx = order[b * batch_size: tf.minimum((b + 1) * batch_size, n)]
            with tf.GradientTape() as tape:
                loss = loss_fn(tf.gather(ys, idx), model(tf.gather(xs, idx), training=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            total += loss * tf.cast(tf.shape(idx)[0], tf.float32)
        return total / n

    rng = np.random.default_rng(seed)
    best, plateau, lr, halvings = LowestLoss(), HalveOnPlateau(), LR, 0
    start = time.time()
    for epoch in range(epochs):
        loss = float(run_epoch(tf.constant(rng.permutation(n), tf.int32)))
        if not math.isfinite(loss):
            break
        best.update(epoch, loss, model)
        new_lr = plateau.step(loss, lr)
        if new_lr != lr:
            lr, halvings = new_lr, halvings + 1
            opt.learning_rate.assign(lr)
    best.restore(model)
    return {"epochs": epochs, "batch_size": batch_size, "best_epoch": best.epoch + 1, "best_train_loss": best.loss, "final_lr": lr,
            "lr_halvings": halvings, "train_seconds": round(time.time() - start, 1)}


def to_int8_tflite(model, x_rep):
    """Full-int8 .tflite (int8 input and output) by the standard converter."""
    tf, _ = keras_modules()

    def representative():
        for xi in x_rep[:REP_SEQUENCES]:
            yield [xi[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    from s4op_micro.measure.tflm_runtime import c_stderr

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), c_stderr([]), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
        return bytes(conv.convert())


def quantize_input(x, details):
    scale = float(details["quantization_parameters"]["scales"][0])
    zero = int(details["quantization_parameters"]["zero_points"][0])
    return np.clip(np.round(x / scale) + zero, -128, 127).astype(np.int8)


def tflm_predict(model_bytes, x, arena_bytes):
    """Class predictions of the int8 model in the TFLM runtime, one Invoke per sequence (n, L, C)."""
    from s4op_micro.measure import tflm_runtime as rt

    it = rt.interpreter(model_bytes, arena_size=arena_bytes, what="the peer .tflite")
    xq = quantize_input(x, it.get_input_details(0))
    preds = np.zeros(len(x), np.int64)
    for i, seq in enumerate(xq):
        it.set_input(seq[None], 0)
        it.invoke()
        preds[i] = int(np.argmax(it.get_output(0)[0]))
    return preds


def keras_peer(kind, data, seed, epochs=None, tflite_path=None):
    """Train, convert and run one Keras peer on a Dataset: its figures (a dict)."""
    from s4op_micro.measure import tflm_runtime as rt

    x = np.concatenate([data.x_train, data.x_val]) if len(data.x_val) else data.x_train
    y = np.concatenate([data.y_train, data.y_val]) if len(data.y_val) else data.y_train
    model = BUILDERS[kind](data.seq_len, data.n_channels, data.n_classes)
    trained = train_keras(model, x, y, epochs or EPOCHS[kind], seed, max_updates=MAX_UPDATES[kind])
    float_pred = np.argmax(model(data.x_test, training=False).numpy(), -1)
    model_bytes = to_int8_tflite(model, x)
    if tflite_path:
        Path(tflite_path).write_bytes(model_bytes)
    arena = rt.measure_arena(model_bytes)
    int_pred = tflm_predict(model_bytes, data.x_test, rt.arena_size(arena["needed"]))
    layers, macs = keras_macs(model)
    return {
        "accuracy": float((int_pred == data.y_test).mean()), "float_accuracy": float((float_pred == data.y_test).mean()),
        "int8_float_agreement": float((int_pred == float_pred).mean()),
        "flash_bytes": len(model_bytes), "ram_bytes": arena["needed"], "arena_with_margin_bytes": rt.arena_size(arena["needed"]),
        "macs_per_sequence": macs, "macs_per_decision": macs, "macs_layers": dict(layers), "params": int(model.count_params()),
        "seq_len": int(data.seq_len), "window": int(data.seq_len), "train_sequences": int(len(x)), **trained,
    }


# --- MiniRocket ----------------------------------------------------------------------------------

def minirocket_parts(n_channels, seed):
    """sktime's RocketClassifier pipeline for MiniRocket, as its three parts (transform, scaler, ridge)
    (an sklearn Pipeline around the sktime transformer trips over this sklearn's callback context)."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.preprocessing import StandardScaler
    from sktime.transformations.panel.rocket import MiniRocket, MiniRocketMultivariate

    transform = (MiniRocketMultivariate if n_channels > 1 else MiniRocket)(random_state=seed)
    return transform, StandardScaler(with_mean=False), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10))


def minirocket_macs(transform, ridge, seq_len):
    """Naive MACs of one sequence: 9 * L * channels per (kernel, dilation) convolution, plus the ridge."""
    params = transform.parameters
    if len(params) == 3:   # univariate: dilations, features per dilation, biases
        channels = 84 * len(params[0])
    else:                  # multivariate: channels per (kernel, dilation) combination first
        channels = int(np.sum(params[0]))
    return 9 * seq_len * channels + int(ridge.coef_.size)


def minirocket_peer(data, seed):
    x = np.concatenate([data.x_train, data.x_val]) if len(data.x_val) else data.x_train
    y = np.concatenate([data.y_train, data.y_val]) if len(data.y_val) else data.y_train
    transform, scaler, ridge = minirocket_parts(data.n_channels, seed)
    start = time.time()
    ridge.fit(scaler.fit_transform(transform.fit_transform(x.transpose(0, 2, 1).astype(np.float64))), y)
    seconds = time.time() - start
    pred = ridge.predict(scaler.transform(transform.transform(data.x_test.transpose(0, 2, 1).astype(np.float64))))
    n_features = int(ridge.coef_.shape[-1])
    macs = minirocket_macs(transform, ridge, data.seq_len)
    params = n_features + int(scaler.scale_.size) + int(ridge.coef_.size) + int(ridge.intercept_.size)
    return {"accuracy": float((pred == data.y_test).mean()), "float_accuracy": float((pred == data.y_test).mean()),
            "flash_bytes": 4 * params, "ram_bytes": None, "features": n_features, "macs_per_sequence": macs,
            "macs_per_decision": macs, "params": params, "seq_len": int(data.seq_len), "window": int(data.seq_len),
            "train_sequences": int(len(x)), "train_seconds": round(seconds, 1), "alpha": float(ridge.alpha_)}


# --- ours ----------------------------------------------------------------------------------------

def deployed_figures(dataset, seed, workdir, quick=False, budget=None):
    """Our deployed model's figures, {"ours-fit": {...}}: `s4op-micro fit` (in-process) chooses the shape for
    the data within `budget` ({"max_macs_per_step", "max_flash"}: twice the CNN's MACs per sequence / L
    and twice its .tflite bytes), trains it and runs its firmware in QEMU on the whole test set. The one
    place that calls the project (resumable: a finished fit in workdir is read back, not redone)."""
    from s4op_micro.fit import FitOptions, fit

    run = Path(workdir) / f"fit-{dataset}-seed{seed}{'-quick' if quick else ''}"
    reused = (run / "fit.json").exists()
    if not reused:
        options = FitOptions(dataset=dataset, seed=seed, workers=FIT_WORKERS, **(budget or {}),
                             **({"epochs": 5, "candidates": 2, "folds": 2} if quick else {}))
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(run.parent / f"{run.name}.log", "a") as f, contextlib.redirect_stderr(f):
            fit(out=run, options=options, force=True)
    doc = json.loads((run / "fit.json").read_text())
    c, fw = doc["chosen"], doc["firmware"]
    seq_len = fw["steps"] // fw["n_sequences"]
    return {"ours-fit": {
        "accuracy": fw["accuracy"], "float_accuracy": fw["float_accuracy"], "reference_accuracy": fw["reference_accuracy"],
        "cv_accuracy": c["cv_accuracy"], "int8_cv_accuracy": c["int8_cv_accuracy"], "coeff_bits": c["coeff_bits"],
        "test_int8": c["test_int8"], "mismatches": fw["mismatches"], "test_sequences": fw["n_sequences"],
        "flash_bytes": fw["flash_bytes"], "ram_bytes": fw["ram_bytes"], "board": doc["board"],
        "macs_per_step": fw["macs_per_step"], "macs_per_decision": fw["macs_per_step"],
        "macs_per_sequence": fw["macs_per_step"] * seq_len,
        "instructions_per_step": fw["instructions_per_step"], "instructions_per_decision": fw["instructions_per_step"],
        "instructions_per_sequence": fw["instructions_per_step"] * seq_len, "cycles_per_step": fw["cycles_per_step"],
        "seq_len": seq_len, "shape": f"H={c['d_model']} N={c['d_state']} x{c['n_layers']} {c['coeff_bits']}b"
                                          + (" qat" if c.get("qat") else ""),
        "kind": c["kind"], "qat": bool(c.get("qat")),
        "augment": c["augment"], "budget": doc["budget"], "fit_seconds": doc["seconds"], "reused": reused}}


# --- the run -------------------------------------------------------------------------------------

def summarize(records, key):
    vals = [r[key] for r in records if r.get(key) is not None]
    return (statistics.fmean(vals), min(vals), max(vals)) if vals else (None, None, None)


FRACTIONS = ("int8_float_agreement", "cv_accuracy", "int8_cv_accuracy", "train_seconds")   # not rounded to integers


def aggregate(records):
    """One row per (dataset, model kind): means (and min-max) over the seeds."""
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        for kind in KINDS:
            rs = [r for r in records if r["dataset"] == dataset and r["model"] == kind]
            if not rs:
                continue
            acc, lo, hi = summarize(rs, "accuracy")
            row = {"dataset": dataset, "model": kind, "seeds": [r["seed"] for r in rs],
                   "accuracy": acc, "accuracy_min": lo, "accuracy_max": hi, "accuracies": [r["accuracy"] for r in rs],
                   "acc (min-max)": f"{acc:.3f} ({lo:.3f}-{hi:.3f})",
                   "float_accuracy": summarize(rs, "float_accuracy")[0],
                   "shape": "; ".join(dict.fromkeys(r["shape"] for r in rs if r.get("shape"))) or ""}
            for key in ("flash_bytes", "ram_bytes", "macs_per_sequence", "macs_per_decision", "instructions_per_step",
                        "instructions_per_sequence", "params", "train_seconds", "epochs", "best_epoch",
                        "int8_float_agreement", "cv_accuracy", "int8_cv_accuracy", "macs_per_step"):
                mean = summarize(rs, key)[0]
                if mean is not None:
                    row[key] = mean if key in FRACTIONS else round(mean)
            rows.append(row)
    return rows


STYLE = {"cnn": dict(marker="s", color="tab:blue"), "fcn": dict(marker="D", color="tab:green"),
         "minirocket": dict(marker="*", color="tab:purple", markersize=11),
         "ours-fit": dict(marker="o", color="tab:red")}


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    cols = min(2, len(datasets))
    nrows = math.ceil(len(datasets) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    for ax, dataset in zip(axes.ravel(), datasets):
        for r in (r for r in rows if r["dataset"] == dataset):
            err = [[r["accuracy"] - r["accuracy_min"]], [r["accuracy_max"] - r["accuracy"]]]
            ax.errorbar(r["macs_per_sequence"], r["accuracy"], yerr=err, linestyle="none", capsize=3,
                        label=r["model"], **STYLE[r["model"]])
            ax.annotate(r["model"], (r["macs_per_sequence"], r["accuracy"]), textcoords="offset points",
                        xytext=(5, -11), fontsize=7)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.margins(x=0.15, y=0.08)
        ax.set_title(dataset)
        ax.set_xlabel("MACs per sequence")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3, which="both")
    for ax in axes.ravel()[len(datasets):]:
        ax.axis("off")
    handles, labels = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.suptitle("Peers: int8 accuracy (float for MiniRocket) vs MACs per sequence; bars = min-max over seeds",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(datasets, seeds, workdir, quick=False):
    import torch  # noqa: F401  (before TensorFlow: both load their own OpenMP/oneDNN)

    from s4op_micro.data import load_dataset

    records = []
    epochs = QUICK_EPOCHS if quick else EPOCHS
    cache = Path(workdir) / ("peers-quick" if quick else "peers")
    cache.mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        data = load_dataset(dataset, val_fraction=0)
        for seed in seeds:
            for kind in KINDS[:3]:
                start = time.time()
                done = cache / f"{dataset}-{kind}-seed{seed}.json"   # a finished peer in --workdir is not redone
                if done.exists():
                    fig = {**json.loads(done.read_text()), "reused": True}
                else:
                    fig = minirocket_peer(data, seed) if kind == "minirocket" else keras_peer(kind, data, seed, epochs[kind])
                    done.write_text(json.dumps(fig))
                records.append({"dataset": dataset, "model": kind, "seed": seed, **fig})
                log(f"{dataset} {kind} seed {seed}: accuracy {fig['accuracy']:.4f} (float {fig['float_accuracy']:.4f}), "
                    f"{fig['flash_bytes']} B, {fig['macs_per_sequence']:,} MACs/seq, {time.time() - start:.0f} s")
            start = time.time()
            cnn = next(r for r in records if (r["dataset"], r["model"], r["seed"]) == (dataset, "cnn", seed))
            budget = {"max_macs_per_step": 2 * cnn["macs_per_sequence"] // data.seq_len, "max_flash": 2 * cnn["flash_bytes"]}
            for kind, fig in deployed_figures(dataset, seed, workdir, quick, budget).items():
                records.append({"dataset": dataset, "model": kind, "seed": seed, **fig})
                log(f"{dataset} {kind} seed {seed}: firmware accuracy {fig['accuracy']:.4f} (float "
                    f"{fig['float_accuracy']:.4f}), {fig['flash_bytes']} B flash, {fig['macs_per_sequence']:,} MACs/seq, "
                    f"{fig['instructions_per_step']:,.0f} instructions/step, {fig['shape']} ({fig['kind']}), "
                    f"fit {time.time() - start:.0f} s")
    return records


def publish(records, seeds, quick, seconds):
    rows = aggregate(records)
    reused = sum(1 for r in records if r.get("reused"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    cols = ["dataset", "model", "shape", "acc (min-max)", "cv_accuracy", "int8_cv_accuracy", "float_accuracy", "flash_bytes", "ram_bytes", "macs_per_sequence",
            "macs_per_decision", "instructions_per_step", "instructions_per_sequence", "params"]
    notes = [
        f"Seeds {','.join(map(str, seeds))}; accuracy = test-set fraction, mean (min-max) over the seeds: int8 in the "
        "TFLM runtime for cnn/fcn, firmware in QEMU (cortex-m7) for ours, float64 for MiniRocket; float_accuracy = the "
        "Keras float model / PyTorch / MiniRocket.",
        "flash_bytes: cnn/fcn the .tflite; ours the model's code + weights (arm-none-eabi-gcc -Os, export report); "
        "minirocket its float32 parameters (not deployed). ram_bytes: cnn/fcn the smallest TFLM arena that runs "
        "(measured on this 64-bit host, TFLM code not counted; a sliding-window CNN also keeps L*C input bytes); "
        "ours the static state and buffers.",
        "MACs per sequence: cnn/fcn sum over Conv1D of L_out*k*C_in*C_out plus Dense C_in*C_out ('same' padding's zero "
        "taps counted, pooling/BN/bias/ReLU 0); minirocket 9*L*channels per (kernel, dilation) plus the ridge (naive "
        "count); ours MACs per step (export report) * L.",
        "MACs per decision (streaming, one decision per new sample): cnn/fcn/minirocket are re-run on a sliding window "
        "of the training length L, so a decision costs a whole window; ours is causal, one step per decision.",
        "instructions_per_step: ours only, QEMU's deterministic instruction count on cortex-m7 (mps2-an500).",
        "Training of cnn/fcn: all training data, Adam 1e-3, batches of min(n/10, 16), up to "
        + ", ".join(f"{k} {v}" for k, v in (QUICK_EPOCHS if quick else EPOCHS).items())
        + " epochs capped at " + ", ".join(f"{k} {v}" for k, v in MAX_UPDATES.items())
        + f" updates, LR halved after {PLATEAU} epochs without a lower training loss (floor {LR_FLOOR}), the "
        "lowest-training-loss epoch kept; then full int8 by tf.lite.TFLiteConverter.",
        "ours-fit: `s4op-micro fit` per dataset and seed within twice the CNN's MACs per sequence (as MACs per step: "
        "2*CNN/L) and twice its .tflite bytes: the grid d_model 8..64 x d_state 4..64 x 1..4 layers priced from shapes "
        "(cost_report, analytic cycles), the 6 largest feasible shapes cross-validated (3 stratified folds of the "
        "training set), then the winner with scale,jitter augmentation, trained 4x longer, both, and a ~2x model "
        "taken down to the winner's cycles by guided pruning; every fold model scored as float and by the int8 "
        "integer reference at 8- and 16-bit recurrence coefficients on its held-out fold; the --finalists best "
        "points (fit's default; fit.json's recipe records the number) by int8 CV accuracy cross-validated on 3 "
        "repetitions of the folds (fresh splits and seeds), and if they crown another shape than the winner's, that "
        "shape's own variants on all 3 repetitions; the best finalist's own "
        "fold models QAT fine-tuned at its width (kept only if the int8 CV accuracy rises); trained on all training "
        "data (last epoch) and deployed at its width, the next point if its compiled flash misses the budget; the "
        "test set chooses nothing. shape: the chosen H, N, layers, coefficient bits and `qat` per seed; cv_accuracy / "
        "int8_cv_accuracy: its float / int8 CV accuracy.",
        "Before fit (main's table, 3 seeds): ours-base, the hand-picked 32/32/2 (arrowhead 32/32/4), reached "
        "gunpoint 0.967 at 1,732,800 MACs/seq, arrowhead 0.817 at 5,783,040, basicmotions 1.000 at 1,177,600, "
        "digits 0.977 at 755,712 (7-18x the CNN's MACs).",
        f"Reproduce: `python benchmarks/bench_peers.py --seeds {','.join(map(str, seeds))}"
        + (" --quick" if quick else "") + " --workdir DIR` (a rerun with the same DIR reads finished results back).",
        f"Wall time of this run: {seconds / 60:.1f} min on a shared 2-core machine"
        + (f" ({reused} of {len(records)} results read back from --workdir, not redone)." if reused else ".")
        + (" --quick: reduced budgets (few epochs; ours trained 10 epochs, 30 test sequences on the firmware)."
           if quick else ""),
    ]
    write_results("peers", rows, cols, "Peers: Keras CNN / FCN in TFLM (int8), MiniRocket (float), ours (firmware)"
                  + (" [--quick]" if quick else ""), notes)
    doc = json.loads((RESULTS / "peers.json").read_text())
    doc["records"] = records
    (RESULTS / "peers.json").write_text(json.dumps(doc, indent=1))
    plot(rows, RESULTS / "peers.png")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"1 seed, few epochs, datasets {','.join(QUICK_DATASETS)} (a smoke test, not figures)")
    ap.add_argument("--datasets", help=f"comma list (default: all shipped: {','.join(SHIPPED)})")
    ap.add_argument("--seeds", help="comma list of seeds (default 0,1,2; --quick 0)")
    ap.add_argument("--workdir", help="keep the pipeline runs and finished peers here (a rerun resumes); "
                    "default: a temporary directory")
    a = ap.parse_args(argv)
    datasets = a.datasets.split(",") if a.datasets else list(QUICK_DATASETS if a.quick else SHIPPED)
    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else ([0] if a.quick else [0, 1, 2])
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        records = run(datasets, seeds, a.workdir or tmp, a.quick)
    publish(records, seeds, a.quick, time.time() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
