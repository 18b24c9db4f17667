"""Commands of the export stage: `export`, `run`, `finetune --qat`.

`run DIR` dispatches on where the exported model runs (RUNNERS): `--host` is implemented here;
`--emulator qemu` and `--runtime tflm` resolve a function `cmd_run_qemu(args, ctx)` in
s4op_micro.firmware and `cmd_run_tflm(args, ctx)` in s4op_micro.export.tflm when those stages
provide them (ctx: the RunContext below, with the test set, the integer reference and the float
model), each returning a result dict like run_host's.
"""

import importlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError


def cmd_export(args):
    from ..cli import emit
    from .cgen import export_model

    report = export_model(args.model, args.board, args.out, calib_samples=args.calib_samples,
                          coeff_bits=args.coeff_bits, formats=args.formats, force=args.force,
                          test_vectors=args.test_vectors, data_args=args)
    report["out"] = str(args.out)
    emit(args, report, lambda r: (
        f"exported {args.model} for {r['board']} -> {r['out']}: {r['coeff_bits']}-bit coefficients, "
        f"flash {r['flash_bytes']} B, RAM {r['ram_bytes']} B ({'measured' if r['sizes_measured'] else 'estimated'}), "
        f"{r['macs_per_step']} MACs/step\n"
        f"accuracy on {r['n_eval']} {r['dataset']} test sequences: float {r['float_accuracy']:.4f}, "
        f"int8 reference {r['int_accuracy']:.4f} (agreement {r['float_int_agreement']:.4f})"))
    return 0


@dataclass
class RunContext:
    export_dir: Path
    qmodel: object
    reference: object
    x_int8: np.ndarray
    y: np.ndarray
    x_float: np.ndarray
    model: object


def load_run_context(args):
    from ..checkpoint import load_model
    from ..train import load_data_for
    from .cgen import load_qmodel
    from .reference import IntegerReference

    d = Path(args.dir)
    if not d.is_dir():
        raise UserError(f"{d} is not a directory; pass the DIR of `s4op-micro export --out DIR`")
    q = load_qmodel(d)
    model, ckpt = load_model(d / "model.pt")
    data = load_data_for(ckpt, args)
    n = len(data.x_test) if args.limit is None else min(args.limit, len(data.x_test))
    if n < 1:
        raise UserError("no test sequences to run (--limit must be >= 1)")
    ref = IntegerReference(q)
    x = data.x_test[:n]
    return RunContext(d, q, ref, ref.quantize_input(x), data.y_test[:n], x, model)


def run_host(args, ctx):
    import torch

    from .hostrun import compile_host, run_host as run_exe

    with tempfile.TemporaryDirectory() as tmp:
        exe = compile_host(ctx.export_dir, tmp, debug=True)
        c_scores, counters = run_exe(exe, ctx.x_int8, ctx.qmodel.meta["n_classes"])
    ref_scores = ctx.reference.run(ctx.x_int8)
    with torch.no_grad():
        float_pred = ctx.model(torch.as_tensor(ctx.x_float).float()).argmax(-1).numpy()
    mism = int((c_scores != ref_scores).any(axis=-1).sum())
    return {"target": "host", "n_sequences": int(len(ctx.y)), "mismatches": mism,
            "mismatched_scores": int((c_scores != ref_scores).sum()),
            "accuracy": float((c_scores.argmax(-1) == ctx.y).mean()),
            "reference_accuracy": float((ref_scores.argmax(-1) == ctx.y).mean()),
            "float_accuracy": float((float_pred == ctx.y).mean()),
            "saturations": counters, "reference_saturations": {"sat_state": ctx.reference.sat_state,
                                                                "sat_act": ctx.reference.sat_act}}


# where each target's runner lives: a function here, or (module, function) provided by another stage
RUNNERS = {
    "host": run_host,
    "qemu": ("s4op_micro.firmware", "cmd_run_qemu"),
    "tflm": ("s4op_micro.export.tflm", "cmd_run_tflm"),
}


def resolve_runner(target):
    r = RUNNERS[target]
    if callable(r):
        return r
    module, name = r
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        what = {"qemu": "--emulator qemu", "tflm": "--runtime tflm"}[target]
        raise UserError(f"`run {what}` is not available yet in this version of s4op-micro ({module}.{name} is "
                        "missing); use `run DIR --host`") from None
    return fn


def cmd_run(args):
    from ..cli import emit

    target = "host" if args.host else args.emulator or args.runtime
    if not target:
        raise UserError("say where to run: --host, --emulator qemu or --runtime tflm")
    if getattr(args, "profile", False):
        if target != "qemu":
            raise UserError("--profile needs --emulator qemu (it counts the emulator's translated blocks)")
        from ..measure.profile import format_profile, profile_export

        p = profile_export(args.dir, board=args.board, timeout=args.timeout)
        emit(args, p.to_dict(), lambda _: format_profile(p))
        return 0
    runner = resolve_runner(target)
    res = runner(args, load_run_context(args))
    details = getattr(runner, "details", None)  # a runner's own report lines (e.g. costs), if it has any
    emit(args, res, lambda r: (
        f"{r['target']}: {r['n_sequences']} sequences, accuracy {r['accuracy']:.4f} "
        f"(integer reference {r['reference_accuracy']:.4f}, float {r['float_accuracy']:.4f}), "
        f"mismatches vs the integer reference: {r['mismatches']}") + (f"\n{details(r)}" if details else ""))
    return 0 if res["mismatches"] == 0 else 1


def register(sub):
    from ..train import add_data_args

    p = sub.add_parser("export", help="quantize a checkpoint to int8 and generate C for a board",
                       description="Discretize, calibrate and quantize a checkpoint; write C sources, model.json, report.json.")
    p.add_argument("model", help="checkpoint (model.pt)")
    p.add_argument("--board", required=True, help="board or core (see `s4op-micro boards`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--calib-samples", type=int, default=256, help="training sequences for calibration (default 256)")
    p.add_argument("--coeff-bits", type=int, choices=[8, 16], default=8, help="recurrence coefficient width (default 8)")
    p.add_argument("--formats", default="c", help="comma list of c,tflm (default c)")
    p.add_argument("--test-vectors", type=int, default=8, help="test sequences embedded for the firmware (default 8)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run an exported model on the test set (host, QEMU or TFLM)",
                       description="Run DIR's model on the test set and compare every score with the integer reference.")
    p.add_argument("dir", help="export directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", action="store_true", help="compile with the host gcc and run here")
    where.add_argument("--emulator", choices=["qemu"], help="build for the board and run in QEMU")
    where.add_argument("--runtime", choices=["tflm"], help="run the .tflite in the TFLM runtime")
    add_data_args(p, required=False)
    p.add_argument("--limit", type=int, help="use at most this many test sequences")
    p.add_argument("--board", help="board for --emulator (default: DIR/model.json's board)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per emulator run (default 120)")
    p.add_argument("--profile", action="store_true",
                   help="with --emulator qemu: per-phase instructions, MACs and cycle ranges of s4op_step on DIR's "
                        "embedded test vectors (QEMU plugin)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_run)

    from .qat import register_finetune

    register_finetune(sub)
