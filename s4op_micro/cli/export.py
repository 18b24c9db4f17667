"""Commands: `export`, `run`, `finetune --qat`."""

from ..core.checks import COEFF_BITS
from ..core.errors import UserError
from ..deploy import FORMATS, export, run
from ..measure.profile import profile_export
from ..quant.qat import qat_finetune
from .common import add_data_args, at_least, data_source, emit, positive


def cmd_export(args):
    res = export(args.model, board=args.board, out=args.out, calib_samples=args.calib_samples,
                 coeff_bits=args.coeff_bits, formats=args.formats, test_vectors=args.test_vectors, force=args.force,
                 **data_source(args))
    emit(args, res.to_dict(), lambda r: (
        f"exported {args.model} for {r['board']} -> {r['out']}: {r['coeff_bits']}-bit coefficients, "
        f"model flash {r['flash_bytes']} B, RAM {r['ram_bytes']} B "
        f"({'measured: model sources -Os' if r['sizes_measured'] else 'estimated'}; the firmware adds harness and "
        f"start-up code), {r['macs_per_step']} MACs/step\n"
        f"accuracy on {r['n_eval']} {r['dataset']} test sequences: float {r['float_accuracy']:.4f}, "
        f"int8 reference {r['int_accuracy']:.4f} (agreement {r['float_int_agreement']:.4f})"))
    return 0


def format_qemu(r):
    """The lines `run --emulator qemu` adds to the run summary."""
    lines = [f"{r['instructions_per_step']:.1f} instructions/step on {r['board']} ({r['machine']}), "
             f"~{r['cycles_per_step']:.0f} cycles/step (~{r['us_per_step']:.1f} us at {r['clock_hz'] / 1e6:g} MHz)",
             f"cycles: {r['cycles_source']}"]
    for L in r["layers"]:
        lines.append(f"  layer {L['layer']}: {L['instructions_per_step']:.1f} instructions/step ({100 * L['share']:.1f}%)")
    lines.append(f"  outside the layers (encoder, pooling, decoder, calls): {r['outside_layers_instructions_per_step']:.1f}")
    if r.get("first_mismatch"):
        m = r["first_mismatch"]
        lines.append(f"first mismatch: sequence {m['sequence']}: firmware {m['firmware']} vs reference {m['reference']}")
    return "\n".join(lines)


def cmd_run(args):
    target = "host" if args.host else args.emulator or args.runtime
    if args.profile:
        if target != "qemu":
            raise UserError("--profile needs --emulator qemu (it counts the emulator's translated blocks)")
        p = profile_export(args.dir, board=args.board, timeout=args.timeout)
        emit(args, p.to_dict(), lambda _: format_profile(p))
        return 0
    res = run(args.dir, target=target, board=args.board, limit=args.limit, timeout=args.timeout, **data_source(args))
    details = format_qemu(res) if target == "qemu" else None
    emit(args, res, lambda r: (
        f"{r['target']}: {r['n_sequences']} sequences, accuracy {r['accuracy']:.4f} "
        f"(integer reference {r['reference_accuracy']:.4f}, float {r['float_accuracy']:.4f}), "
        f"mismatches vs the integer reference: {r['mismatches']}") + (f"\n{details}" if details else ""))
    return 0 if res["mismatches"] == 0 else 1


def format_profile(p):
    """Human table of a PhaseProfile: per-step instructions, share, MACs, instructions/MAC, cycles."""
    s = p.steps or 1
    lines = [f"per-phase profile on {p.board} ({p.cpu}): {p.steps} steps of {p.sequences} sequences",
             f"{'phase':<10} {'layer':>5} {'insn/step':>10} {'share':>6} {'MACs/step':>10} {'insn/MAC':>8} "
             f"{'cycles/step (low-high)':>24}"]
    for r in p.rows:
        ipm = f"{r.instructions_per_mac:8.2f}" if r.instructions_per_mac else f"{'-':>8}"
        lay = "all" if r.layer is None else str(r.layer)
        lines.append(f"{r.phase:<10} {lay:>5} {r.instructions / s:10.1f} {100 * r.share:5.1f}% {r.macs / s:10.1f} {ipm} "
                     f"{r.cycles_low / s:11.0f} - {r.cycles_high / s:<10.0f}")
    macs = sum(r.macs for r in p.rows)
    lines.append(f"{'step':<10} {'':>5} {p.step_instructions / s:10.1f} {100.0:5.1f}% {macs / s:10.1f} "
                 f"{(p.step_instructions / macs if macs else 0):8.2f} {p.cycles_low / s:11.0f} - {p.cycles_high / s:<10.0f}")
    lines.append(f"firmware's own count: {p.firmware_instructions / s:.1f} insn/step; profile - firmware = "
                 f"{p.difference:+d} insn over the run ({p.difference / s:+.2f}/step, "
                 f"{100 * p.difference / p.firmware_instructions if p.firmware_instructions else 0:+.4f}%)")
    lines.append("outside the step (not in the total): " + ", ".join(f"{k} {v}" for k, v in p.outside.items()))
    lines.append(f"cycles: {p.cycles_source}")
    lines.append(f"branches: {p.branch_method}")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def cmd_finetune(args):
    res = qat_finetune(args.model, out=args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                       coeff_bits=args.coeff_bits, calib_samples=args.calib_samples, seed=args.seed, force=args.force,
                       progress=not args.quiet, **data_source(args))
    emit(args, res, lambda r: (
        f"QAT fine-tune ({r['coeff_bits']}-bit coefficients), {r['seconds']:.0f} s -> {r['model']}\n"
        f"  before: float {r['before']['float']:.4f}, int8 reference {r['before']['int']:.4f}\n"
        f"  after:  float {r['after']['float']:.4f}, int8 reference {r['after']['int']:.4f}"))
    return 0


def register(sub):
    p = sub.add_parser("export", help="quantize a checkpoint to int8 and generate C for a board",
                       description="Discretize, calibrate and quantize a checkpoint; write C sources, Makefile and "
                                   "CMakeLists.txt, model.json, report.json (and with --formats c,tflm a TFLM model).")
    p.add_argument("model", help="checkpoint (model.pt)")
    p.add_argument("--board", required=True, help="board or core (see `s4op-micro boards`)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--calib-samples", type=at_least(1), default=256, help="training sequences for calibration (default 256)")
    p.add_argument("--coeff-bits", type=int, choices=COEFF_BITS, default=8, help="recurrence coefficient width (default 8)")
    p.add_argument("--formats", default="c", help=f"comma list of {','.join(FORMATS)} (default c)")
    p.add_argument("--test-vectors", type=at_least(0), default=8, help="test sequences embedded for the firmware (default 8)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory made by s4op-micro")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run an exported model on the test set (host, QEMU or TFLM)",
                       description="Run DIR's model on the test set and compare every score with the integer reference; "
                                   "exit code 1 when any sequence differs.")
    p.add_argument("dir", help="export directory")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", action="store_true", help="compile with the host gcc and run here")
    where.add_argument("--emulator", choices=["qemu"], help="build for the board and run in QEMU")
    where.add_argument("--runtime", choices=["tflm"], help="run the .tflite in the TFLM runtime")
    add_data_args(p, required=False)
    p.add_argument("--limit", type=at_least(1), help="use at most this many test sequences (default: all)")
    p.add_argument("--board", help="board for --emulator (default: DIR/model.json's board)")
    p.add_argument("--timeout", type=positive, default=120.0, help="seconds per emulator run (default 120)")
    p.add_argument("--profile", action="store_true",
                   help="with --emulator qemu: per-phase instructions, MACs and cycle ranges of s4op_step on DIR's "
                        "embedded test vectors (QEMU plugin)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("finetune", help="quantization-aware fine-tuning of a checkpoint",
                       description="Fine-tune a checkpoint through the fake-quantized integer model (quantization-aware "
                                   "training); plain fine-tuning is what `prune` does. Writes DIR/model.pt.")
    p.add_argument("model", help="checkpoint (model.pt)")
    add_data_args(p, required=False)
    p.add_argument("--qat", action="store_true", help="accepted for compatibility: quantization-aware is the only mode")
    p.add_argument("--out", required=True, help="output directory (gets model.pt)")
    p.add_argument("--epochs", type=at_least(1), default=10, help="epochs (default 10)")
    p.add_argument("--lr", type=positive, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=at_least(1), default=32, help="batch size (default 32)")
    p.add_argument("--coeff-bits", type=int, choices=COEFF_BITS, default=8, help="recurrence coefficient width (default 8)")
    p.add_argument("--calib-samples", type=at_least(1), default=256, help="training sequences for calibration (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory made by s4op-micro")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_finetune)
