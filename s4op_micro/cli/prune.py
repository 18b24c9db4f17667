"""Command: `prune`."""

from pathlib import Path

from ..deploy import firmware_measure
from ..prune.api import PruneOptions, prune
from ..prune.controller import DEFAULT_RATES, GRANULARITIES, STRATEGIES
from ..prune.importance import SCORES
from ..prune.latency import ORACLES
from .common import add_data_args, at_least, data_source, emit, in_range, positive

OPTION_NAMES = [f for f in PruneOptions.__dataclass_fields__ if f != "data_source"]


def cmd_prune(args):
    options = PruneOptions(**{k: getattr(args, k) for k in OPTION_NAMES},
                           data_source={k: v for k, v in data_source(args).items() if v is not None})
    res = prune(args.model, args.out, options, force=args.force, quiet=args.quiet, measure=firmware_measure)
    emit(args, res.to_dict(), human)
    return 0


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
    cut = (e["pruned"] or [{}])[0].get("width_cut", 0)
    return (f"d_model -{cut}; " if cut else "") + "; ".join(parts)


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
    p.add_argument("--force", action="store_true", help="replace DIR entirely (only a directory s4op-micro made)")
    p.add_argument("--strategy", required=True, choices=STRATEGIES, help="s4op (the published algorithm) or guided (ours)")
    p.add_argument("--rates", help=f"increasing fractions of operators to prune (default {','.join(map(str, DEFAULT_RATES))})")
    p.add_argument("--seeds", help="a count or comma-separated seeds; s4op: one candidate per seed (default the published "
                                   "7,42,123,2024,31650; a count takes the first ones); guided: budget per rate is "
                                   "seeds x finetune-epochs (default 5, from --seed)")
    p.add_argument("--finetune-epochs", type=at_least(1), help="epochs per candidate fine-tune (default s4op: the "
                   "published ones per dataset, e.g. 20 for UCR sets; guided: 5)")
    p.add_argument("--patience", type=at_least(0), help="early-stopping patience of the fine-tunes in epochs (default s4op: "
                   "published per dataset, e.g. 6 for UCR sets; guided: none, the best epoch is reloaded)")
    p.add_argument("--lr", type=positive, help="fine-tune learning rate (default s4op: the published 1e-4; guided: a tenth "
                   "of the training one)")
    p.add_argument("--batch-size", type=at_least(1), help="fine-tune batch size (default: the training one)")
    p.add_argument("--score", default="taylor", help=f"guided importance score: {' | '.join(SCORES)} (default taylor)")
    p.add_argument("--granularity", default="operator",
                   help=f"guided: what may go, comma-separated from {', '.join(GRANULARITIES)}")
    p.add_argument("--max-drop", type=at_least(0.0, float), help="guided: stop before accuracy on the selection set (validation + training sequences) falls more than this many points "
                                                    "(default 1.0 without --rates or a cycle target)")
    p.add_argument("--target-cycles", type=positive, help="guided: stop once cycles per step are at most this")
    p.add_argument("--target-ratio", type=in_range(0, 1, low_open=True), help="guided: stop once cycles per step are at most this fraction of the unpruned model's")
    p.add_argument("--max-latency-us", type=positive, help="guided: stop once a step takes at most this many "
                   "microseconds at the board's clock (a cycle budget)")
    p.add_argument("--max-flash", type=at_least(1), help="guided: stop once the model's flash (bytes, cost estimate) is at most this")
    p.add_argument("--max-ram", type=at_least(1), help="guided: stop once the model's RAM (bytes, cost estimate) is at most this")
    p.add_argument("--latency", default="analytic", help=f"latency oracle: {' | '.join(ORACLES)}")
    p.add_argument("--board", default="cortex-m7", help="target board or core (see `s4op-micro boards`)")
    p.add_argument("--workers", type=at_least(1), default=1, help="candidates evaluated in parallel on local processes")
    p.add_argument("--ray-address", help="run candidates on Ray instead ('local' starts a local instance, else ray://HOST:PORT or auto)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--qat", action="store_true", help="quantization-aware fine-tunes (fake quantization of the export stage)")
    p.add_argument("--coeff-bits", type=int, choices=[8, 16], default=8,
                   help="bits of the exported recurrence coefficients: for --qat, flash/RAM and analytic cycles")
    p.add_argument("--seed", type=int, default=0, help="guided: the base seed of its fine-tunes (s4op: see --seeds)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_prune)
