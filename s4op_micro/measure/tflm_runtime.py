"""The TFLM runtime side: check a .tflite, load it into the `tflite-micro` Python package's
interpreter (the real TFLM kernels), stream sequences through it, measure its arena, compare its
scores with the integer reference. Every failure is a one-line UserError.
"""

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import UserError
from ..codegen.tflm import multiplier_check
from ..codegen.tflm_graph import builtin_names, fb
from .scores import compare

# Builtin ops with a kernel in the tflite-micro build we validate with (all its resolver registers).
TFLM_BUILTINS = frozenset("""
ABS ADD ADD_N ARG_MAX ARG_MIN ASSIGN_VARIABLE AVERAGE_POOL_2D BATCH_MATMUL BATCH_TO_SPACE_ND BROADCAST_ARGS
BROADCAST_TO CALL_ONCE CAST CEIL CONCATENATION CONV_2D COS CUMSUM DEPTH_TO_SPACE DEPTHWISE_CONV_2D DEQUANTIZE
DIV ELU EMBEDDING_LOOKUP EQUAL EXP EXPAND_DIMS FILL FLOOR FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GATHER_ND
GREATER GREATER_EQUAL HARD_SWISH IF L2_NORMALIZATION L2_POOL_2D LEAKY_RELU LESS LESS_EQUAL LOG LOGICAL_AND
LOGICAL_NOT LOGICAL_OR LOGISTIC LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL PACK
PAD PADV2 PRELU QUANTIZE READ_VARIABLE REDUCE_MAX REDUCE_MIN RELU RELU6 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR REVERSE_V2 ROUND RSQRT SELECT_V2 SHAPE SIN SLICE SOFTMAX SPACE_TO_BATCH_ND
SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE SQUARED_DIFFERENCE SQUEEZE STRIDED_SLICE SUB SUM SVDF TANH TRANSPOSE
TRANSPOSE_CONV UNIDIRECTIONAL_SEQUENCE_LSTM UNPACK VAR_HANDLE WHILE ZEROS_LIKE
""".split())
ARENA_MARGIN = (0.10, 1024)      # +10% + 1 KiB over the measured arena, see arena_size()
PROBE_ARENA = 8 << 20            # arena for loading a model before its own size is known


def _runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        raise UserError("the TFLM runtime is not installed; pip install 's4op-micro[tflm]' (package tflite-micro)") from None
    return runtime


@contextlib.contextmanager
def c_stderr(lines):
    """Capture what C++ code writes to file descriptor 2 (TFLM's MicroPrintf) into `lines`."""
    with tempfile.TemporaryFile() as f:
        saved = os.dup(2)
        os.dup2(f.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            f.seek(0)
            lines.extend(f.read().decode(errors="replace").splitlines())


def check_model(model_bytes, what="the .tflite"):
    """UserError unless model_bytes is a readable TFLite flatbuffer whose ops all have TFLM kernels.
    (Checked in Python first: the C++ runtime does not verify the flatbuffer and would crash.)"""
    data = bytes(model_bytes)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{what} is not a TFLite flatbuffer (no TFL3 identifier); re-export with --formats c,tflm")
    try:
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAs(data, 0))
        ops = builtin_names(data)
        sg = model.subgraphs[0]
        ok = all(0 <= t.buffer < len(model.buffers) for t in sg.tensors) and all(
            0 <= i < len(sg.tensors) for o in sg.operators for i in list(o.inputs) + list(o.outputs) if i >= 0)
    except Exception as e:  # a corrupt flatbuffer fails anywhere inside the generated readers
        raise UserError(f"{what} is corrupt ({type(e).__name__} while reading it); re-export with --formats c,tflm") from None
    if not ok:
        raise UserError(f"{what} is corrupt (a tensor or operator index points outside its table)")
    missing = sorted(set(ops) - TFLM_BUILTINS)
    if missing:
        raise UserError(f"{what} uses {', '.join(missing)}, which TFLM has no kernel for; "
                        "use ops that TFLM implements (GELU: a GATHER table or x*sigmoid(1.702x))")
    return model


def _n_inputs(model_bytes):
    return fb.Model.GetRootAs(bytes(model_bytes), 0).Subgraphs(0).InputsLength()


def interpreter(model_bytes, arena_size=None, what="the .tflite"):
    """A TFLM interpreter (the real kernels) for the model, or a one-line UserError."""
    check_model(model_bytes, what)
    rt, log = _runtime(), []
    try:
        with c_stderr(log):
            it = rt.Interpreter.from_bytes(bytes(model_bytes), arena_size=arena_size or PROBE_ARENA)
    except Exception as e:
        detail = next((ln.strip() for ln in log if ln.strip()), str(e))
        raise UserError(f"{what} does not load in the TFLM runtime: {detail}") from None
    return it


def run_sequences(it, x):
    """Stream int8 x (n, L, C) through the interpreter, one Invoke per timestep, resetting the state
    (resource variables) per sequence: int8 scores at every step, (n, L, classes)."""
    x = np.asarray(x, dtype=np.int8)
    if x.ndim == 2:
        x = x[..., None]
    out = np.zeros((*x.shape[:2], it.get_output_details(0)["shape"][-1]), np.int8)
    log = []
    with c_stderr(log):
        try:
            for n, seq in enumerate(x):
                it.reset()
                for t, xt in enumerate(seq):
                    it.set_input(xt[None, :], 0)
                    it.invoke()
                    out[n, t] = it.get_output(0)[0]
        except RuntimeError as e:
            raise UserError(f"the TFLM runtime failed at sequence {n}, step {t}: {(log or [str(e)])[0].strip()}") from None
    return out


def measure_arena(model_bytes):
    """The arena the TFLM runtime needs: its RecordingMicroAllocator report after one Invoke
    ("total": what stays allocated), and the smallest arena that really loads and runs ("needed",
    by bisection: planning the memory also borrows temporary space the report does not show)."""
    it = interpreter(model_bytes)
    _invoke_zeros(it, _n_inputs(model_bytes))
    log = []
    with c_stderr(log):
        it.print_allocations()
    found = {k: int(v) for k, v in re.findall(r"Arena allocation (total|head|tail) (\d+) bytes", "\n".join(log))}
    if "total" not in found:
        raise UserError("the TFLM runtime printed no allocation report; is this tflite-micro build recent enough?")
    lo, hi = found["total"] - 16, found["total"]
    while not _runs(model_bytes, hi):
        lo, hi = hi, hi * 2
        if hi > PROBE_ARENA:
            raise UserError("the model does not run in the TFLM runtime even with an 8 MiB arena")
    while hi - lo > 16:
        mid = (lo + hi) // 32 * 16
        lo, hi = (lo, mid) if _runs(model_bytes, mid) else (mid, hi)
    return {"total": found["total"], "head": found.get("head"), "tail": found.get("tail"), "needed": hi,
            "report": [ln.replace("[RecordingMicroAllocator] ", "") for ln in log if ln.strip()]}


def _invoke_zeros(it, n_inputs=1):
    """One Invoke on zeros in every input (of its own type): what an arena must hold."""
    for i in range(n_inputs):
        d = it.get_input_details(i)
        it.set_input(np.zeros(d["shape"], d["dtype"]), i)
    it.invoke()


def _runs(model_bytes, size):
    try:
        log = []
        with c_stderr(log):
            _invoke_zeros(_runtime().Interpreter.from_bytes(bytes(model_bytes), arena_size=int(size)),
                          _n_inputs(model_bytes))
        return True
    except RuntimeError:
        return False


def arena_size(measured):
    """Measured need + 10% + 1 KiB, 16-byte aligned. The measurement is on the 64-bit host, whose
    TfLiteEvalTensor / node structs are larger than a 32-bit core's (so it over-counts there); the
    margin covers scratch buffers that optimized kernels (CMSIS-NN) request and the reference ones
    do not, and allocator alignment."""
    frac, extra = ARENA_MARGIN
    return int(-(-(measured * (1 + frac) + extra) // 16) * 16)


def lsb_stats(got, want):
    """Distribution of got - want (int arrays of equal shape) in LSB."""
    d = np.asarray(got, np.int64) - np.asarray(want, np.int64)
    values, counts = np.unique(d, return_counts=True)
    return {"max_lsb_diff": int(np.abs(d).max(initial=0)),
            "mean_abs_lsb_diff": float(np.abs(d).mean()) if d.size else 0.0,
            "lsb_histogram": {str(int(v)): int(c) for v, c in zip(values, counts)},
            "scores_compared": int(d.size), "scores_differing": int((d != 0).sum())}


# --- the export's check and `run DIR --runtime tflm` -----------------------------------------------

def check_export(model_bytes, x, expected):
    """What the export measures in TFLM before writing DIR/tflm/: the flatbuffer loads, its arena
    (measured, with the margin of arena_size), and the test sequence x streamed through the real
    kernels against the integer reference's scores `expected` (L, classes)."""
    check_model(model_bytes, "the generated .tflite")
    arena = measure_arena(model_bytes)
    size = arena_size(arena["needed"])
    got = run_sequences(interpreter(model_bytes, size, "the generated .tflite"), x)[0]
    return {"arena": arena, "size": size, "margin": ARENA_MARGIN,
            "mismatched_steps": int((got != expected).any(-1).sum())}


def run_export(export_dir, qmodel, reference, test):
    """Run DIR/tflm/model.tflite over the test set (s4op_micro.measure.scores.TestSet): accuracies,
    mismatches against the integer reference and the per-timestep score difference in LSB."""
    path = Path(export_dir) / "tflm" / "model.tflite"
    if not path.is_file():
        raise UserError(f"{path} does not exist; export with --formats c,tflm")
    model_bytes = path.read_bytes()
    meta_path = path.with_name("tflm.json")
    try:
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{meta_path} is corrupt (not JSON); re-export with --formats c,tflm") from None
    size = meta.get("arena", {}).get("size_bytes") or arena_size(measure_arena(model_bytes)["needed"])
    check_model(model_bytes, str(path))
    it = interpreter(model_bytes, size, str(path))
    m = qmodel.meta
    shapes = (list(it.get_input_details(0)["shape"]), list(it.get_output_details(0)["shape"]))
    if shapes != ([1, m.d_input], [1, m.n_classes]):
        raise UserError(f"{path} takes {shapes[0]} and gives {shapes[1]}; DIR's model needs [1, {m.d_input}] "
                        f"-> [1, {m.n_classes}]: re-export with --formats c,tflm")
    got = run_sequences(it, test.x_int8)
    want = reference.run_steps(test.x_int8)
    pred, ref_pred = got[:, -1].argmax(-1), want[:, -1].argmax(-1)
    result = compare(got[:, -1], test, "tflm")
    result.update({"steps": int(got.shape[1]), "prediction_agreement": float((pred == ref_pred).mean()),
                   "mismatches": int((got != want).any(axis=(1, 2)).sum()), **lsb_stats(got, want),
                   "model_bytes": len(model_bytes), "arena_bytes": int(size),
                   "multiplier_check": meta.get("multiplier_check") or multiplier_check(qmodel)})
    return result
