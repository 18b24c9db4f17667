"""Commands: `boards`, `build`, `flash`, `profile`."""

from pathlib import Path

from ..core.boards import BOARDS, CORE_CPI, KB, MB
from ..core.checks import resolve_board
from ..core.errors import UserError
from ..deploy import latency_table, profile
from ..toolchain.board_io import flash
from ..toolchain.build import build
from .common import at_least, emit, positive

OPT_LEVELS = ("-O0", "-O1", "-O2", "-O3", "-Os", "-Og")


def _fmt_bytes(n):
    return f"{n // MB} MB" if n % MB == 0 else f"{n // KB} KB"


def _boards_table(rows):
    head = f"{'board':18} {'cpu':14} {'flash':>7} {'RAM':>7} {'clock':>8}  {'dsp':3} {'mve':3} {'fpu':4} {'cpi':>4} {'qemu':11} pyocd"
    lines = [head, "-" * len(head)]
    for b in rows:
        lines.append(f"{b['name']:18} {b['cpu']:14} {_fmt_bytes(b['flash_bytes']):>7} {_fmt_bytes(b['ram_bytes']):>7} "
                     f"{b['clock_hz'] / 1e6:>5.0f}MHz  {'yes' if b['dsp'] else '-':3} {'yes' if b['mve'] else '-':3} "
                     f"{b['fpu']:4} {b['cpi'] or 0:>4.2f} {b['qemu_machine'] or '-':11} {b['pyocd_target'] or '-'}")
    lines.append("")
    lines.append("cpi: cycles per instruction assumed when an emulator instruction count is turned into a cycle "
                 "estimate (core.boards.CORE_CPI):")
    lines += [f"  {cpu}: {cpi:g} ({basis})" for cpu, (cpi, basis) in CORE_CPI.items()]
    lines += [f"{b['name']}: {b['description']}" for b in rows]
    return "\n".join(lines)


def cmd_boards(args):
    emit(args, {"boards": [b.to_dict() for b in BOARDS.values()]}, lambda r: _boards_table(r["boards"]))
    return 0


def cmd_build(args):
    board = None if (args.host and not args.board) else resolve_board(args.board, args.dir)
    defines = list(args.define or []) + (["S4OP_PROFILE_LAYERS"] if args.layers else [])
    res = build(args.dir, board, host=args.host, out_dir=args.out, defines=defines, opt=args.opt)
    b = None if args.host else board

    def human(r):
        s = f"built {r['elf']}: text {r['text']} B, data {r['data']} B, bss {r['bss']} B"
        if b is not None:
            s += (f"\nwhole firmware (model, harness, start-up code, libc, stack): flash {r['flash_bytes']} / "
                  f"{b.flash_bytes} B ({100 * r['flash_bytes'] / b.flash_bytes:.1f}%), RAM {r['ram_bytes']} / "
                  f"{b.ram_bytes} B ({100 * r['ram_bytes'] / b.ram_bytes:.1f}%) on {b.name}; costs counted in {r['unit']}")
        return s

    d = res.to_dict()
    if b is not None:
        d.update(board_flash_bytes=b.flash_bytes, board_ram_bytes=b.ram_bytes)
    emit(args, d, human)
    return 0


def cmd_flash(args):
    path = Path(args.dir)
    board = resolve_board(args.board, path if path.is_dir() else path.parent)
    res = flash(path, board, probe=args.probe)
    emit(args, res, lambda r: f"flashed {r['file']} to {r['board']} via probe {r['probe']}")
    return 0


def format_report(r):
    lines = [f"{r['n_sequences']} sequences, {r['steps']} steps: accuracy {r['accuracy']:.3f} ({r['correct']}/{r['n_sequences']})",
             f"cost {r['cost_total']} {r['unit']} total, {r['cost_per_step']:.1f} {r['unit']}/step"
             + (f" ({r['us_per_step']:.2f} us/step at {r['clock_hz'] / 1e6:g} MHz)" if r.get("us_per_step") else "")]
    for i, c in enumerate(r["layer_costs"]):
        share = 100 * c / r["cost_total"] if r["cost_total"] else 0.0
        lines.append(f"  layer {i}: {r['layer_cost_per_step'][i]:.1f} {r['unit']}/step ({share:.1f}%)")
    return "\n".join(lines)


def format_lut(r):
    lines = [f"latency table for {r['measured_with']['model']} on {r['board']} -> {r['out']}",
             f"cycles per step = {r['cycles']}", f"fixed (outside the layers): {r['fixed']:.0f} cycles/step"]
    widths = list(r["layers"][0]["width"])
    lines.append("layer " + " ".join(f"{'w=' + w:>9}" for w in widths) + "  removed/operator")
    for i, L in enumerate(r["layers"]):
        lines.append(f"{i:>5} " + " ".join(f"{L['width'][w]:>9.0f}" for w in widths) + f"  {L['removed_column']:>9.1f}")
    return "\n".join(lines)


def _parse_widths(text):
    try:
        return sorted({int(w) for w in text.split(",") if w.strip()})
    except ValueError:
        raise UserError(f"--widths {text!r}: give comma-separated operator counts, e.g. 0,4,8") from None


def cmd_profile(args):
    if args.lut:
        if not args.out:
            raise UserError("--lut needs --out FILE.json (the table for prune --latency lut:FILE)")
        model = args.model or (str(Path(args.dir) / "model.pt") if args.dir else None)
        if model is None:
            raise UserError("--lut needs the model to measure: --model MODEL.pt (or an export DIR with its model.pt)")
        board = resolve_board(args.board, args.dir)
        report = latency_table(model=model, out=args.out, board=board,
                               widths=_parse_widths(args.widths) if args.widths else None, timeout=args.timeout)
        emit(args, report, format_lut)
        return 0
    if args.emulator and args.dir is None:
        raise UserError("--emulator needs the export directory: s4op-micro profile --emulator qemu DIR")
    report = profile(port=args.port, log_file=args.log, export_dir=args.dir if args.emulator else None,
                     board=args.board, baud=args.baud, timeout=args.timeout, layers=args.layers)
    emit(args, report, format_report)
    return 0


def register(sub):
    p = sub.add_parser("boards", help="the board table (flags, memory, clock, QEMU machine, pyocd target)",
                       description="List the supported cores and boards.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_boards)

    p = sub.add_parser("build", help="build the benchmark firmware for a board (or the host)",
                       description="Compile an export directory with the board support and the benchmark main.")
    p.add_argument("dir", help="export directory (include/, src/)")
    p.add_argument("--board", help="board or core (default: DIR/model.json's board); see s4op-micro boards")
    p.add_argument("--host", action="store_true", help="native build that runs on this machine (no cost counts)")
    p.add_argument("--out", help="output directory (default DIR/build/BOARD)")
    p.add_argument("-D", "--define", action="append", metavar="NAME[=VALUE]",
                   help="extra C define, e.g. S4OP_OUT_USER to supply your own s4op_putc")
    p.add_argument("--layers", action="store_true", help="per-layer costs (-DS4OP_PROFILE_LAYERS)")
    p.add_argument("--opt", default="-O2", choices=OPT_LEVELS, help="optimization flag (default -O2; `--opt -O3` works)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("flash", help="flash a board with pyocd",
                       description="Find the debug probe, build (if DIR is an export directory) and flash with pyocd.")
    p.add_argument("dir", help="export directory or a .hex/.elf/.bin")
    p.add_argument("--board", help="named board (default: DIR/model.json's board)")
    p.add_argument("--probe", help="debug probe unique ID (see `pyocd list`)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_flash)

    p = sub.add_parser("profile", help="measurement report from a board, a log or QEMU; or the latency table",
                       description="Summarize the benchmark firmware's S4OP lines (accuracy, cost per step, per-layer "
                                   "costs) from a board's serial port, a saved log or QEMU; or, with --lut, measure the "
                                   "per-layer latency table that `prune --latency lut:FILE` reads.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--port", metavar="DEV", help="serial port of a board running the benchmark firmware")
    src.add_argument("--log", metavar="FILE", help="a saved firmware output")
    src.add_argument("--emulator", choices=["qemu"], help="build DIR for --board and run it in QEMU")
    src.add_argument("--lut", action="store_true",
                     help="measure per-layer cost by operators kept in QEMU (NetAdapt-style) and write the latency "
                          "table for prune --latency lut:FILE (needs --out, and --model or DIR)")
    p.add_argument("dir", nargs="?", help="export directory (with --emulator; with --lut: its model.pt)")
    p.add_argument("--out", help="with --lut: the latency table to write (JSON)")
    p.add_argument("--model", help="with --lut: the (unpruned) checkpoint to measure")
    p.add_argument("--widths", help="with --lut: operators kept to measure, comma-separated (default 0,1,H/4,H/2,3H/4,H)")
    p.add_argument("--board", help="board (default: DIR/model.json's board)")
    p.add_argument("--baud", type=at_least(1), default=115200, help="with --port: baud rate (default 115200)")
    p.add_argument("--timeout", type=positive, default=60.0, help="seconds to wait for the run (default 60)")
    p.add_argument("--layers", action="store_true", help="with --emulator: build with per-layer costs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_profile)
