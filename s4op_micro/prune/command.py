"""`s4op-micro prune MODEL (--dataset | --data) --out DIR --strategy s4op|guided ...`

Checks every input before any work (one-line UserError, exit 2, no output written), prunes with the
chosen strategy, and writes DIR/pruned_<pct>.pt per kept model (the `pruning` key records the
strategy, the rate, what went, step by step, and the fine-tune recipe), DIR/pareto.json and DIR/pareto.png.
The fine-tunes follow recipe.FinetuneRecipe: S4oP's published one for s4op, guided's own for guided;
--finetune-epochs, --patience, --lr, --seeds and --batch-size override it (and are recorded).
"""

import sys
import time
from pathlib import Path

from ..boards import get_board
from ..checkpoint import load_model, save_checkpoint
from ..errors import UserError
from ..export import cost_report
from ..outdir import atomic_output_dir
from ..train import GENERIC_DEFAULTS, add_data_args, evaluate, load_data_for, parse_augment
from . import pareto
from .controller import DEFAULT_RATES, GRANULARITIES, STRATEGIES, Candidate, Context, Settings, run
from .finetune import check_device, qat_factory
from .importance import SCORES
from .latency import ORACLES, make_oracle
from .operators import Lineage, effective_params, operators_kept, pruned_fraction, summary
from .parallel import Executor
from .recipe import FinetuneRecipe, parse_seeds


def parse_rates(text):
    try:
        rates = [float(r) for r in text.split(",")]
    except ValueError:
        raise UserError(f"--rates {text!r}: give comma-separated fractions, e.g. 0.1,0.3,0.5") from None
    if not all(0 < r < 1 for r in rates):
        raise UserError(f"--rates {text!r}: every rate must be a fraction in (0, 1)")
    if any(b <= a for a, b in zip(rates, rates[1:])):
        raise UserError(f"--rates {text!r}: rates must be strictly increasing")
    return rates


def parse_granularity(text, strategy, ssm):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in GRANULARITIES]
    if unknown or not kinds:
        raise UserError(f"unknown granularity {','.join(unknown) or text!r}; choose from {', '.join(GRANULARITIES)} (comma-separated)")
    if strategy == "s4op" and kinds != ["operator"]:
        raise UserError("--strategy s4op prunes operators only (as published); other granularities need --strategy guided")
    if "mode" in kinds and ssm != "s4d":
        raise UserError("--granularity mode needs an S4D model (S4's DPLR modes are coupled)")
    return tuple(kinds)


def settings_from(args, model, ckpt, start_rate, log):
    if args.score not in SCORES:
        raise UserError(f"unknown score {args.score!r}; choose from {', '.join(SCORES)}")
    rates = parse_rates(args.rates) if args.rates else list(DEFAULT_RATES)
    if start_rate > rates[0] + 1e-9:
        raise UserError(f"{args.model} is already pruned to {start_rate:.1%} of its state, beyond the first rate "
                        f"{rates[0]:.0%}; pass --rates above {start_rate:.0%}")
    for name in ("finetune_epochs", "workers", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.patience is not None and args.patience < 0:
        raise UserError("--patience must be 0 or more (epochs)")
    if args.lr is not None and args.lr <= 0:
        raise UserError("--lr must be positive")
    if args.target_cycles is not None and args.target_cycles <= 0:
        raise UserError("--target-cycles must be positive (cycles per timestep)")
    if args.target_ratio is not None and not 0 < args.target_ratio < 1:
        raise UserError("--target-ratio is the fraction of the unpruned model's cycles to reach, in (0, 1)")
    if args.strategy == "s4op" and (args.max_drop is not None or args.target_cycles or args.target_ratio):
        raise UserError("--max-drop/--target-cycles/--target-ratio steer --strategy guided; s4op runs every rate")
    max_drop = args.max_drop
    if args.strategy == "guided" and max_drop is None and not args.rates and not (args.target_cycles or args.target_ratio):
        max_drop = 1.0  # guided on its own: prune until it costs a point of accuracy
    return Settings(
        recipe=recipe_from(args, ckpt), strategy=args.strategy, rates=rates, score=args.score,
        granularity=parse_granularity(args.granularity, args.strategy, model.config["ssm"]),
        max_drop=max_drop, target_cycles=args.target_cycles, device=check_device(args.device),
        qat=args.qat, coeff_bits=args.coeff_bits, bars=not args.quiet, log=log)


OVERRIDES = {"--finetune-epochs": "finetune_epochs", "--patience": "patience", "--lr": "lr", "--seeds": "seeds",
             "--batch-size": "batch_size"}


def recipe_from(args, ckpt):
    """The strategy's fine-tune recipe (s4op: published, per dataset; guided: its own, from the
    training's hyperparameters), with the flags given on the command line in place of its values."""
    hp = {**GENERIC_DEFAULTS, **ckpt["metrics"].get("hyperparameters", {})}
    given = dict(epochs=args.finetune_epochs, patience=args.patience, lr=args.lr,
                 seeds=None if args.seeds is None else parse_seeds(args.seeds))
    batch_size = args.batch_size or hp["batch_size"]
    if args.strategy == "s4op":
        dataset = args.dataset or (None if args.data else ckpt["dataset"].get("name"))
        recipe = FinetuneRecipe.published_s4op(dataset, batch_size, **given)
    else:
        recipe = FinetuneRecipe.guided(hp["lr"], batch_size, parse_augment(hp["augment"]), args.seed, **given)
    return recipe.with_overrides(flag for flag, name in OVERRIDES.items() if getattr(args, name) is not None)


def cmd_prune(args):
    from ..cli import emit

    started = time.time()
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    model, ckpt = load_model(args.model)
    lineage = Lineage.of(model, ckpt.get("pruning"))
    start_rate = pruned_fraction(model, lineage)
    settings = settings_from(args, model, ckpt, start_rate, log)
    if args.qat:
        qat_factory()  # fail now, not in a worker
    board = get_board(args.board)
    data = load_data_for(ckpt, args)
    oracle = make_oracle(args.latency, board, lineage, args.coeff_bits, calib_x=data.x_train[:256])
    start = Candidate(model, lineage, list((ckpt.get("pruning") or {}).get("history", [])))
    base_cycles = oracle.cycles(model, lineage)
    if args.target_ratio:
        settings.target_cycles = args.target_ratio * base_cycles

    out = Path(args.out)
    with atomic_output_dir(out, force=args.force, allow_existing=True) as tmp:
        with Executor(data, workers=args.workers, ray_address=args.ray_address) as executor:
            ctx = Context(settings, data, oracle, executor)
            kept = run(start, ctx)
        previous = pareto.read(tmp)
        keep_others = pareto.others(previous, args.strategy)
        entries = [entry(args, "unpruned" if start_rate == 0 else "start", start_rate, start, Path(args.model).resolve(),
                         data, oracle, board, ckpt, epochs=0)]
        written = []
        for rate, cand in kept:
            name = pareto.checkpoint_name(rate, args.strategy, keep_others)
            e = entry(args, args.strategy, rate, cand, out.resolve() / name, data, oracle, board, ckpt, cand.epochs)
            save_checkpoint(tmp / name, cand.model, ckpt["normalization"], ckpt["dataset"], metrics_of(e, ckpt),
                            pruning=pruning_record(args, settings, rate, cand))
            entries.append(e)
            written.append(name)
        for name in pareto.stale_files(previous, args.strategy, written):
            (tmp / name).unlink(missing_ok=True)
        finetune = {**pareto.finetune_of(tmp, keep_others), args.strategy: settings.recipe.as_record()}
        pareto.write(tmp, keep_others + entries, finetune)

    result = {"out": str(out), "strategy": args.strategy, "board": board.name, "cycles_source": oracle.source,
              "models": entries, "stopped": ctx.stop_reason, "seconds": round(time.time() - started, 1)}
    emit(args, result, human)
    return 0


def entry(args, strategy, rate, cand, path, data, oracle, board, ckpt, epochs):
    model, lineage = cand.model, cand.lineage
    test = evaluate(model, data.x_test, data.y_test)
    report = cost_report(model, args.coeff_bits)
    val = cand.val[0] if cand.val else evaluate(model, data.x_val, data.y_val)["accuracy"]
    return {
        "rate": round(rate, 4), "pruned_fraction": round(pruned_fraction(model, lineage), 4), "strategy": strategy,
        "path": str(path), "accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": val,
        "operators": operators_kept(model, lineage), "pruned": summary(model, lineage),
        "params": effective_params(model), "flash_bytes": report["flash_bytes"], "ram_bytes": report["ram_bytes"],
        "cycles_per_step": round(oracle.cycles(model, lineage), 1), "cycles_source": oracle.source, "board": board.name,
        "finetune_epochs": epochs,
    }


def metrics_of(e, ckpt):
    base = ckpt["metrics"]
    return {"test_accuracy": e["accuracy"], "test_loss": e["test_loss"], "val_accuracy": e["val_accuracy"],
            "cycles_per_step": e["cycles_per_step"], "cycles_source": e["cycles_source"], "board": e["board"],
            "hyperparameters": base.get("hyperparameters", {}), "seed": base.get("seed"),
            "unpruned_test_accuracy": base.get("unpruned_test_accuracy", base.get("test_accuracy"))}


def pruning_record(args, s, rate, cand):
    return {"strategy": s.strategy, "rate": rate, "pruned_fraction": pruned_fraction(cand.model, cand.lineage),
            "granularity": list(s.granularity), "score": s.score if s.strategy == "guided" else None,
            "latency": args.latency, "board": args.board, "base_model": str(Path(args.model).resolve()),
            "lineage": cand.lineage.as_dict(), "history": cand.history, "summary": summary(cand.model, cand.lineage),
            "finetune": s.recipe.as_record()}


def went(e):
    """What went, per original layer: '7 bypassed, 2 removed, 30 modes' or 'block removed'."""
    parts = []
    for row in e["pruned"]:
        if row["block_removed"]:
            parts.append(f"L{row['layer']}: block removed")
            continue
        kinds = [f"{row[k]} {k}" for k in ("bypassed", "removed") if row[k]]
        kinds += [f"{row['modes_pruned']} modes"] if row["modes_pruned"] else []
        parts.append(f"L{row['layer']}: " + (", ".join(kinds) or "-"))
    return "; ".join(parts)


def human(r):
    base = r["models"][0]
    lines = [f"prune {r['strategy']} -> {r['out']} ({r['seconds']:.0f} s); cycles per step: {r['cycles_source']}, {r['board']}",
             f"{'rate':>5} {'pruned':>7} {'test acc':>8} {'val acc':>7} {'cycles':>9} {'fewer':>6}  {'operators':14} what went"]
    for e in r["models"]:
        lines.append(f"{e['rate']:>5.0%} {e['pruned_fraction']:>7.1%} {e['accuracy']:>8.4f} {e['val_accuracy']:>7.3f} "
                     f"{e['cycles_per_step']:>9.0f} {base['cycles_per_step'] / e['cycles_per_step']:>5.2f}x  "
                     f"{','.join(map(str, e['operators'])):14} {went(e)}  [{Path(e['path']).name}]")
    if r["stopped"]:
        lines.append(f"stopped: {r['stopped']}")
    return "\n".join(lines)


def register(sub):
    p = sub.add_parser("prune", help="prune operators (S4oP baseline or the latency-guided controller)",
                       description="Prune SSM operators of a trained model: --strategy s4op reproduces the published "
                                   "S4oP algorithm; --strategy guided uses importance scores and a latency oracle. "
                                   "Writes DIR/pruned_<pct>.pt, DIR/pareto.json and DIR/pareto.png.")
    p.add_argument("model", help="checkpoint to prune (model.pt, or an already pruned one)")
    add_data_args(p, required=False)
    p.add_argument("--out", required=True, help="output directory (the other strategy's results in it are kept)")
    p.add_argument("--force", action="store_true", help="replace DIR entirely")
    p.add_argument("--strategy", required=True, choices=STRATEGIES)
    p.add_argument("--rates", help=f"increasing fractions of operators to prune (default {','.join(map(str, DEFAULT_RATES))})")
    p.add_argument("--seeds", help="a count or comma-separated seeds; s4op: one candidate per seed (default the published "
                                   "7,42,123,2024,31650; a count takes the first ones); guided: budget per rate is "
                                   "seeds x finetune-epochs (default 5, from --seed)")
    p.add_argument("--finetune-epochs", type=int, help="epochs per candidate fine-tune (default s4op: the published ones "
                                                       "per dataset, e.g. 20 for UCR sets; guided: 5)")
    p.add_argument("--patience", type=int, help="early-stopping patience of the fine-tunes in epochs (default s4op: "
                                                "published per dataset, e.g. 6 for UCR sets; guided: 2)")
    p.add_argument("--lr", type=float, help="fine-tune learning rate (default s4op: the published 1e-4; guided: a tenth "
                                            "of the training one)")
    p.add_argument("--batch-size", type=int, help="default: the training one")
    p.add_argument("--score", default="taylor", help=f"guided importance score: {' | '.join(SCORES)} (default taylor)")
    p.add_argument("--granularity", default="operator",
                   help=f"guided: what may go, comma-separated from {', '.join(GRANULARITIES)}")
    p.add_argument("--max-drop", type=float, help="guided: stop before validation accuracy falls more than this many points "
                                                    "(default 1.0 without --rates or a cycle target)")
    p.add_argument("--target-cycles", type=float, help="guided: stop once cycles per step are at most this")
    p.add_argument("--target-ratio", type=float, help="guided: stop once cycles per step are at most this fraction of the unpruned model's")
    p.add_argument("--latency", default="analytic", help=f"latency oracle: {' | '.join(ORACLES)}")
    p.add_argument("--board", default="cortex-m7", help="target board or core (see `s4op-micro boards`)")
    p.add_argument("--workers", type=int, default=1, help="candidates evaluated in parallel on local processes")
    p.add_argument("--ray-address", help="run candidates on Ray instead ('local' starts a local instance, else ray://HOST:PORT or auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tunes (fake quantization of the export stage)")
    p.add_argument("--coeff-bits", type=int, choices=[8, 16], default=8,
                   help="bits of the exported recurrence coefficients: for --qat, flash/RAM and analytic cycles")
    p.add_argument("--seed", type=int, default=0, help="guided: the base seed of its fine-tunes (s4op: see --seeds)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_prune)
