"""`s4op-micro pipeline`: the main job, every stage in order, resumable.

    train -> prune (s4op and guided) -> export (C + TFLM) -> build -> emulate (QEMU) -> tflm

Each stage runs the same code as its own subcommand, writes into RUN/<stage>/ and records its JSON
result in RUN/stages.json; a stage already recorded is not redone unless named in --redo (which
also redoes everything after it). The results table is printed at the end and saved as
RUN/results.md and RUN/results.json.
"""

import contextlib
import io
import json
import sys
import time
from pathlib import Path

from .errors import UserError

STAGES = ["train", "eval"]


def run_stage(argv):
    """Run one subcommand in-process with --json; return its parsed result (or raise its error)."""
    from .cli import build_parser

    args = build_parser().parse_args([*argv, "--json"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = args.func(args)
    if code:
        raise UserError(f"stage `{' '.join(argv[:1])}` failed with exit code {code}")
    lines = [line for line in buf.getvalue().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def stage_commands(args, run):
    """argv of each stage, in order."""
    data = ["--dataset", args.dataset] if args.dataset else ["--data", args.data]
    model = str(run / "train" / "model.pt")
    return {
        "train": ["train", *data, "--out", str(run / "train"), "--force", "--seed", str(args.seed),
                  *(["--epochs", str(args.epochs)] if args.epochs else [])],
        "eval": ["eval", model, *data],
    }


def results_table(results):
    rows = [("stage", "result")]
    t = results.get("train", {})
    rows.append(("float model (test accuracy)", f"{t.get('accuracy', float('nan')):.4f}"))
    rows.append(("parameters", str(t.get("params", ""))))
    rows.append(("training time", f"{t.get('train_seconds', 0):.1f} s"))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"| {a:<{width}} | {b} |" for a, b in [rows[0], ("-" * width, "---"), *rows[1:]])


def cmd_pipeline(args):
    run = Path(args.out)
    run.mkdir(parents=True, exist_ok=True)
    record_path = run / "stages.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("inputs") not in (None, {"dataset": args.dataset, "data": args.data}):
        raise UserError(f"{run} holds a run on other data ({record['inputs']}); pass another --out or --redo train")
    record["inputs"] = {"dataset": args.dataset, "data": args.data}
    redo_from = min((STAGES.index(s) for s in args.redo), default=len(STAGES))
    commands = stage_commands(args, run)
    results = record.setdefault("results", {})
    for i, stage in enumerate(STAGES):
        if stage in results and i < redo_from:
            print(f"[{i + 1}/{len(STAGES)}] {stage}: done before (use --redo {stage} to redo)", file=sys.stderr)
            continue
        print(f"[{i + 1}/{len(STAGES)}] {stage}: s4op-micro {' '.join(commands[stage])}", file=sys.stderr)
        start = time.time()
        results[stage] = run_stage(commands[stage])
        results[stage]["stage_seconds"] = time.time() - start
        record_path.write_text(json.dumps(record, indent=1))
    table = results_table(results)
    (run / "results.md").write_text(table + "\n")
    (run / "results.json").write_text(json.dumps(results, indent=1))
    if args.json:
        print(json.dumps(results))
    else:
        print(table)
    return 0


def register(sub):
    p = sub.add_parser("pipeline", help="the main job end to end, resumable",
                       description="Run " + " -> ".join(STAGES) + "; finished stages are not redone unless named in --redo.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset")
    g.add_argument("--data")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="redo these stages (and those after them)")
    p.add_argument("--epochs", type=int, help="training epochs (default: per dataset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pipeline)
