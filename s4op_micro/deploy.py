"""Deployment stages on top of the layers below, each a function with keyword arguments:

  export(...)   checkpoint -> DIR: int8 model, C sources, Makefile/CMake, model.json, report.json,
                qmodel.npz, model.pt and, with "tflm" in formats, DIR/tflm/ -> ExportResult
  run(...)      DIR's model over a test set on the host, in QEMU or in the TFLM runtime, every
                score checked against the integer reference -> dict (documented JSON keys)
  profile(...)  benchmark firmware output from a board's serial port, a saved log or QEMU -> dict
  latency_table(...)  the per-layer cost table of `prune --latency lut:FILE`, measured in QEMU

Work flows one way: load and check everything first, then quantize, render, build, measure.
"""

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .codegen import tflm as tflm_codegen
from .codegen.c import render_c
from .codegen.project import write_build_files
from .core.boards import get_board
from .core.checks import check_fits, coeff_bits as check_coeff_bits, emulated_board, resolve_board
from .core.errors import UserError
from .core.outdir import atomic_output_dir, atomic_write_bytes, check_output_path
from .core.progress import log
from .measure import emulator, tflm_runtime
from .measure.scores import TestSet, compare
from .models.checkpoint import load_model
from .prune.operators import Decision, apply
from .quant.cost import cost_report
from .quant.discretize import check_supported
from .quant.qmodel import load_qmodel, model_json, save_qmodel
from .quant.quantize import quantize_model
from .quant.reference import CALIB_SAMPLES, IntegerReference
from .toolchain import board_io, records
from .toolchain.build import build, model_sizes
from .toolchain.hostrun import compile_host, run_host
from .toolchain.qemu import run_qemu
from .train import load_data_for

FORMATS = ("c", "tflm")
TARGETS = ("host", "qemu", "tflm")
EVAL_LIMIT = 1000     # test sequences the export evaluates (float and integer reference accuracy)


def parse_formats(formats):
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"unknown --formats {','.join(bad) or '(empty)'}; choose from {','.join(FORMATS)}")
    return list(dict.fromkeys(formats))


@dataclass
class ExportResult:
    """report.json of an export, as a dict in `report`; `out` is the export directory."""
    out: str
    report: dict

    def to_dict(self):
        return {**self.report, "out": self.out}


def export(model, *, board, out, calib_samples=CALIB_SAMPLES, coeff_bits=8, formats=("c",), test_vectors=8, force=False,
           dataset=None, data=None, root=None, max_train=None) -> ExportResult:
    """Checkpoint `model` -> OUT for `board`. The data (for calibration, the accuracy report and the
    embedded test vectors) is the checkpoint's own unless dataset= / data= names another."""
    board = get_board(board)
    formats = parse_formats(formats)
    check_coeff_bits(coeff_bits)
    if calib_samples is not None and calib_samples < 1:
        raise UserError("--calib-samples must be >= 1")
    if test_vectors < 0:
        raise UserError("--test-vectors must be >= 0")
    out = check_output_path(out, force)
    float_model, ckpt = load_model(model)
    check_supported(float_model)
    est = cost_report(float_model, coeff_bits)   # shapes only: refuse a clearly too big model before calibrating
    if est["flash_bytes"] > 1.1 * board.flash_bytes or est["ram_bytes"] > 1.1 * board.ram_bytes:
        check_fits(board, est["flash_bytes"], est["ram_bytes"], "the model", "estimated from its shapes",
                   coeff_bits_used=coeff_bits)
    loaded = load_data_for(ckpt, dataset=dataset, data=data, root=root, max_train=max_train)

    log("export", f"calibrating on {min(len(loaded.x_train), calib_samples or len(loaded.x_train))} sequences "
        f"and quantizing ({coeff_bits}-bit coefficients)")
    calib = loaded.x_train[:calib_samples] if calib_samples else loaded.x_train
    q = quantize_model(float_model, calib, coeff_bits=coeff_bits)
    q.meta.board = board.name
    ref = IntegerReference(q)
    n_eval = min(len(loaded.x_test), EVAL_LIMIT)
    x_test, y_test = loaded.x_test[:n_eval], loaded.y_test[:n_eval]
    log("export", f"integer reference on {n_eval} test sequences")
    xq = ref.quantize_input(x_test)
    int_pred = ref.predict(xq) if n_eval else np.zeros(0, int)
    float_pred = _float_predictions(float_model, x_test)
    nt = min(test_vectors, len(loaded.x_test))
    test = (xq[:nt], y_test[:nt], ref.run(xq[:nt]) if nt else np.zeros((0, q.meta.n_classes), np.int8))
    cost = cost_report(q)
    with atomic_output_dir(out, force=force) as tmp:
        log("export", f"rendering C into {out}")
        render_c(q, tmp, source=Path(model).name, test=test)
        write_build_files(tmp, board)
        measured = model_sizes(tmp, board)
        flash = measured["flash_bytes"] if measured else cost["flash_bytes"]
        ram = measured["ram_bytes"] if measured else cost["ram_bytes"]
        check_fits(board, flash, ram, "the model",
                   "model sources compiled -Os" if measured else "estimated from its shapes", coeff_bits_used=coeff_bits)
        report = {
            "board": board.name, "coeff_bits": coeff_bits, "formats": formats,
            "flash_bytes": flash, "ram_bytes": ram, "macs_per_step": cost["macs_per_step"],
            "loads_per_step": cost["loads_per_step"], "modes": cost["modes"], "layers": cost["layers"],
            "sizes_measured": measured, "estimate": {k: cost[k] for k in ("flash_bytes", "const_bytes", "code_bytes", "ram_bytes")},
            "sizes_of": "the model alone (s4op_model.c + s4op_weights.c): no harness, start-up code or libc",
            "conversion_error": q.meta.conversion_error, "coefficients": q.stats,
            "float_accuracy": float((float_pred == y_test).mean()) if n_eval else None,
            "int_accuracy": float((int_pred == y_test).mean()) if n_eval else None,
            "float_int_agreement": float((int_pred == float_pred).mean()) if n_eval else None,
            "n_eval": int(n_eval), "calib_sequences": int(len(calib)), "test_vectors": int(nt),
            "dataset": loaded.name, "saturations": {"state": ref.sat_state, "activations": ref.sat_act},
        }
        (tmp / "model.json").write_text(json.dumps(model_json(q, board.name), indent=1))
        (tmp / "report.json").write_text(json.dumps(report, indent=1))
        save_qmodel(q, tmp / "qmodel.npz")
        shutil.copyfile(model, tmp / "model.pt")
        if "tflm" in formats:
            log("export", "building the .tflite and checking it in the TFLM runtime")
            _export_tflm(q, ref, tmp, calib, board)
    return ExportResult(out=str(out), report=report)


def _export_tflm(q, ref, out_dir, calib, board):
    model_bytes, info = tflm_codegen.build_tflite(q)
    x = tflm_codegen.test_sequence(q, calib)
    expected = ref.run_steps(x)[0]
    checked = tflm_runtime.check_export(model_bytes, x, expected)
    return tflm_codegen.write_tflm(q, out_dir, model_bytes, info, x, expected, checked, board)


def _float_predictions(model, x):
    if not len(x):
        return np.zeros(0, int)
    with torch.no_grad():
        return model(torch.as_tensor(x).float()).argmax(-1).numpy()


# --- run -------------------------------------------------------------------------------------------

@dataclass
class Loaded:
    """An export directory read back: its int8 model, reference, float model and the test set."""
    export_dir: Path
    qmodel: object
    reference: IntegerReference
    model: object
    test: TestSet


def load_export(export_dir, *, limit=None, dataset=None, data=None, root=None, max_train=None):
    d = Path(export_dir)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory; pass the DIR of `s4op-micro export --out DIR`")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (test sequences to run), not {limit}")
    q = load_qmodel(d)
    model, ckpt = load_model(d / "model.pt")
    loaded = load_data_for(ckpt, dataset=dataset, data=data, root=root, max_train=max_train)
    n = len(loaded.x_test) if limit is None else min(limit, len(loaded.x_test))
    if n < 1:
        raise UserError(f"the dataset {loaded.name} has no test sequences to run")
    ref = IntegerReference(q)
    x = loaded.x_test[:n]
    xq = ref.quantize_input(x)
    test = TestSet(x_int8=xq, y=np.asarray(loaded.y_test[:n]), x_float=x,
                   reference_scores=np.asarray(ref.run(xq), dtype=np.int64), float_pred=_float_predictions(model, x))
    return Loaded(d, q, ref, model, test)


def run(export_dir, *, target, board=None, limit=None, timeout=120.0, dataset=None, data=None, root=None,
        max_train=None) -> dict:
    """DIR's model over the test set on `target` (host | qemu | tflm); every score compared with the
    integer reference ("mismatches" counts the sequences that differ)."""
    if target not in TARGETS:
        raise UserError(f"unknown run target {target!r}; choose from {', '.join(TARGETS)}")
    if timeout is not None and not timeout > 0:
        raise UserError(f"--timeout must be positive (seconds), not {timeout}")
    qemu_board = emulated_board(resolve_board(board, export_dir)) if target == "qemu" else None
    ex = load_export(export_dir, limit=limit, dataset=dataset, data=data, root=root, max_train=max_train)
    if target == "qemu":
        return emulator.run_export(ex.export_dir, qemu_board, ex.qmodel, ex.test, timeout=timeout)
    if target == "tflm":
        return tflm_runtime.run_export(ex.export_dir, ex.qmodel, ex.reference, ex.test)
    return _run_host(ex)


def _run_host(ex):
    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_host(ex.export_dir, tmp, debug=True)
        c_scores, counters = run_host(exe, ex.test.x_int8, ex.qmodel.meta.n_classes)
    result = compare(c_scores, ex.test, "host")
    result.update(saturations=counters, reference_saturations={"sat_state": ex.reference.sat_state,
                                                               "sat_act": ex.reference.sat_act})
    return result


# --- profile and the latency table ------------------------------------------------------------------

def profile(*, port=None, log_file=None, export_dir=None, board=None, baud=115200, timeout=60.0, layers=False):
    """The benchmark firmware's report (accuracy, cost per step, per-layer costs) from exactly one
    source: a board's serial port, a saved log, or DIR built for an emulated board and run in QEMU."""
    if sum(v is not None for v in (port, log_file, export_dir)) != 1:
        raise UserError("give exactly one of --port DEV, --log FILE or --emulator qemu DIR")
    if port is not None:
        return records.summarize(records.parse_records(board_io.read_serial(port, baud, timeout)))
    if log_file is not None:
        path = Path(log_file)
        if not path.is_file():
            raise UserError(f"no log file {path}; pass the file the board's output was saved to")
        return records.summarize(records.parse_records(path.read_text(errors="replace")))
    target = emulated_board(resolve_board(board, export_dir))
    defines = ["S4OP_PROFILE_LAYERS"] if layers else []
    out = Path(export_dir) / "build" / (target.name + ("-layers" if layers else ""))
    firmware = build(export_dir, target, out_dir=out, defines=defines)
    return records.summarize(run_qemu(firmware.elf, target, timeout=timeout).lines)


def latency_table(*, model, out, board, widths=None, timeout=60.0):
    """Measure the per-layer cost table of `model` (an unpruned checkpoint) in QEMU and write it to
    OUT (JSON, read by `prune --latency lut:OUT`)."""
    board = get_board(board)
    out = Path(out)
    if not Path(model).is_file():
        raise UserError(f"no checkpoint {model}; pass --model MODEL.pt")
    float_model, ckpt = load_model(model)
    loaded = load_data_for(ckpt)
    H, n_layers = float_model.config["d_model"], float_model.config["n_layers"]

    def narrowed(kind, w):
        cut = {j: list(range(w, H)) for j in range(n_layers)}
        return apply(float_model, Decision(bypass=cut) if kind == "bypassed" else Decision(remove=cut))

    lut = emulator.measure_lut(float_model, narrowed, board, loaded, widths=widths, timeout=timeout,
                               progress=lambda msg: log("profile --lut", msg))
    lut["measured_with"]["model"] = str(model)
    atomic_write_bytes(out, json.dumps(lut, indent=1).encode())
    return dict(lut, out=str(out))


def firmware_measure(model, board, where="emulator", calib_x=None, coeff_bits=8):
    """The measurement the pruning stage's emulator/board oracles are handed."""
    return emulator.measure_cycles(model, board, where, calib_x=calib_x, coeff_bits=coeff_bits)

