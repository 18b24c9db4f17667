"""`s4op-micro pipeline`: the main job, every stage in order, resumable.

    train -> prune (s4op, then guided) -> export (C + TFLM) -> build -> emulate (QEMU) -> tflm

With --model CHECKPOINT (e.g. from `s4op-micro import`) the train stage evaluates that checkpoint
instead of training one, and the later stages start from it.

Each stage runs the same code as its own subcommand (in-process, with --json) and writes into
RUN/<stage>/; its JSON result is recorded in RUN/stages.json. A recorded stage is not redone unless
named in --redo, which also redoes every stage after it. Two models go through export and the
firmware stages: the trained one (`base`) and the pruned one the job keeps (`pruned`: the most
pruned guided model within --max-drop accuracy points of the base on the test set). The results
table is printed at the end and saved as RUN/results.md and RUN/results.json, the plots as
RUN/prune/pareto.png and RUN/layers.png.
"""

import contextlib
import io
import json
import sys
import time
from pathlib import Path

from .errors import UserError

STAGES = ["train", "prune-s4op", "prune-guided", "export", "build", "emulate", "tflm"]
MODELS = ("base", "pruned")


def run_command(argv, ok_codes=(0,)):
    """Run one subcommand in-process with --json; return its parsed result (or raise its error).
    ok_codes: exit codes whose result is still wanted (e.g. 1 from `run` when scores mismatch)."""
    from .cli import build_parser, limit_torch_threads

    limit_torch_threads()
    args = build_parser().parse_args([*argv, "--json"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = args.func(args)
    if code not in ok_codes:
        raise UserError(f"stage command `s4op-micro {' '.join(argv)}` failed with exit code {code}")
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def choose_pruned(run, base_accuracy, max_drop):
    """The most pruned guided model within max_drop points of the base (else the most accurate)."""
    models = json.loads((run / "prune" / "pareto.json").read_text())["models"]
    guided = [m for m in models if m["strategy"] == "guided"] or models
    within = [m for m in guided if 100 * (base_accuracy - m["accuracy"]) <= max_drop]
    pick = max(within, key=lambda m: m["rate"]) if within else max(guided, key=lambda m: m["accuracy"])
    return pick, bool(within)


def stage_commands(stage, args, run, results):
    """The subcommands (argv lists) one stage runs, keyed by what they are for."""
    data = ["--dataset", args.dataset] if args.dataset else ["--data", args.data]
    base = str(Path(args.model).resolve()) if getattr(args, "model", None) else str(run / "train" / "model.pt")
    board = ["--board", args.board]
    if stage == "train" and getattr(args, "model", None):
        return {"base": ["eval", base, *data]}
    if stage == "train":
        return {"base": ["train", *data, "--out", str(run / "train"), "--force", "--seed", str(args.seed),
                         *(["--epochs", str(args.epochs)] if args.epochs else [])]}
    if stage.startswith("prune-"):
        strategy = stage.split("-", 1)[1]
        budget = ["--rates", args.rates, "--seeds", str(args.seeds), "--finetune-epochs", str(args.finetune_epochs)]
        return {strategy: ["prune", base, *data, "--out", str(run / "prune"), "--strategy", strategy, *budget,
                           *board, "--seed", str(args.seed)]}
    paths = {"base": run / "export" / "base", "pruned": run / "export" / "pruned"}
    if stage == "export":
        pruned = results["export"]["chosen"]["path"]
        return {name: ["export", model, *board, "--out", str(paths[name]), "--formats", "c,tflm", "--force", *data]
                for name, model in (("base", base), ("pruned", pruned))}
    if stage == "build":
        return {m: ["build", str(paths[m]), *board] for m in MODELS}
    if stage == "emulate":
        return {m: ["run", str(paths[m]), "--emulator", "qemu", *data, *limit(args)] for m in MODELS}
    if stage == "tflm":
        return {m: ["run", str(paths[m]), "--runtime", "tflm", *data, *limit(args)] for m in MODELS}
    raise AssertionError(stage)


def limit(args):
    return ["--limit", str(args.limit)] if args.limit else []


def run_stage(stage, args, run, results):
    if stage == "export":  # pick the pruned model first: the export stage records the choice
        pick, within = choose_pruned(run, results["train"]["base"]["accuracy"], args.max_drop)
        results["export"] = {"chosen": {**pick, "within_budget": within}}
    out = results.setdefault(stage, {})
    for name, argv in stage_commands(stage, args, run, results).items():
        print(f"    s4op-micro {' '.join(argv)}", file=sys.stderr)
        out[name] = run_command(argv)


def results_rows(results):
    """One row per model: accuracies (float / int8 reference / firmware / TFLM), size and cost."""
    rows = []
    for m in MODELS:
        emu, exp = results["emulate"][m], results["export"][m]
        tflm = results.get("tflm", {}).get(m, {})
        kept = [layer["operators_active"] for layer in exp["layers"]]
        rows.append({
            "model": m, "float": emu["float_accuracy"], "int8 ref": emu["reference_accuracy"],
            "firmware": emu["accuracy"], "tflm": tflm.get("accuracy"), "mismatches": emu["mismatches"],
            "tflm max LSB": tflm.get("max_lsb_diff"),
            "operators": kept, "flash_bytes": exp.get("flash_bytes"), "ram_bytes": exp.get("ram_bytes"),
            "instructions/step": emu["instructions_per_step"], "cycles/step": emu["cycles_per_step"],
            "cycles_source": emu["cycles_source"],
        })
    return rows


def results_table(results, board):
    rows = results_rows(results)
    cols = ["model", "float", "int8 ref", "firmware", "tflm", "mismatches", "tflm max LSB", "operators", "flash_bytes",
            "ram_bytes", "instructions/step", "cycles/step"]

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if v <= 1.0 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    chosen = results["export"]["chosen"]
    base, pruned = rows
    lines += [
        "",
        f"board {board}; accuracies are test-set fractions (float = PyTorch, int8 ref = numpy integer reference, "
        f"firmware = QEMU, tflm = TFLM runtime); mismatches: test sequences whose firmware scores differ from "
        f"the integer reference; tflm max LSB: largest TFLM score difference from it.",
        f"pruned model: {chosen['strategy']} at {chosen['rate']:.0%} of operators "
        + ("(the most pruned within the accuracy budget)" if chosen["within_budget"] else "(none met the budget: the most accurate)")
        + f"; {base['instructions/step'] / pruned['instructions/step']:.2f}x fewer instructions per step than the base.",
        f"cycles: {base['cycles_source']}.",
    ]
    return "\n".join(lines)


def plot_layers(results, path):
    """Per-layer cost (QEMU instructions per step) of the base and the pruned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.4
    for k, m in enumerate(MODELS):
        layers = results["emulate"][m].get("layers", [])
        ax.bar([layer["layer"] + (k - 0.5) * width for layer in layers], [layer["instructions_per_step"] for layer in layers],
               width, label=m)
    ax.set_xlabel("layer")
    ax.set_ylabel("instructions per step (QEMU)")
    ax.set_title("per-layer cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_pipeline(args):
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    record_path = run / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    inputs = {"dataset": args.dataset, "data": args.data, "board": args.board}
    if args.model:
        if not Path(args.model).is_file():
            raise UserError(f"--model {args.model} not found; pass a checkpoint from `s4op-micro train` or `import`")
        inputs["model"] = str(Path(args.model).resolve())
    if record.get("inputs") not in (None, inputs) and "train" not in args.redo:
        raise UserError(f"{run} holds a run with other inputs ({record['inputs']}); pass another --out or --redo train")
    record["inputs"] = inputs
    redo_from = min((STAGES.index(s) for s in args.redo), default=len(STAGES))
    results = record.setdefault("results", {})
    for i, stage in enumerate(STAGES):
        if stage in results and i < redo_from:
            print(f"[{i + 1}/{len(STAGES)}] {stage}: done before (--redo {stage} redoes it)", file=sys.stderr)
            continue
        print(f"[{i + 1}/{len(STAGES)}] {stage}", file=sys.stderr)
        start = time.time()
        results.pop(stage, None)
        run_stage(stage, args, run, results)
        results[stage]["seconds"] = round(time.time() - start, 1)
        record_path.write_text(json.dumps(record, indent=1))
    table = results_table(results, args.board)
    (run / "results.md").write_text(table + "\n")
    (run / "results.json").write_text(json.dumps({"rows": results_rows(results), "stages": results}, indent=1))
    plot_layers(results, run / "layers.png")
    print(json.dumps(results_rows(results)) if args.json else table)
    return 0


def register(sub):
    p = sub.add_parser("pipeline", help="the main job end to end, resumable",
                       description="Run " + " -> ".join(STAGES) + "; finished stages are not redone unless named in --redo.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset")
    g.add_argument("--data")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", help="start from this checkpoint (e.g. from `s4op-micro import`) instead of training one")
    p.add_argument("--board", default="cortex-m7", help="target board or core (default cortex-m7)")
    p.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="redo these stages (and those after them)")
    p.add_argument("--epochs", type=int, help="training epochs (default: per dataset)")
    p.add_argument("--rates", default="0.5,0.7", help="pruning rates of both strategies (reduced budget by default)")
    p.add_argument("--seeds", type=int, default=2, help="pruning candidates per rate")
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy points the kept pruned model may lose")
    p.add_argument("--limit", type=int, help="test sequences for the firmware and TFLM stages (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pipeline)
