"""Command: `fit`."""

from ..fit import FitOptions, fit
from ..fit.cv import TEACHERS
from ..fit.space import COEFF_BITS
from .common import at_least, emit, positive


def _ints(text):
    return tuple(int(v) for v in text.split(",") if v.strip())


def cmd_fit(args):
    o = FitOptions(dataset=args.dataset, data=args.data, root=args.root, board=args.board,
                   max_latency_us=args.max_latency_us, max_flash=args.max_flash, max_ram=args.max_ram,
                   max_macs_per_step=args.max_macs_per_step, workers=args.workers, folds=args.folds, seeds=args.seeds,
                   repeats=args.repeats, finalists=args.finalists,
                   epochs=args.epochs, candidates=args.candidates, d_models=args.d_models, d_states=args.d_states,
                   n_layers=args.n_layers, augment=not args.no_augment, long=not args.no_long, prune=not args.no_prune,
                   distill=args.distill, qat=not args.no_qat,
                   measure=not args.no_measure, seed=args.seed)
    res = fit(out=args.out, options=o, force=args.force)

    def human(r):
        c, fw = r["chosen"], r["firmware"]
        lines = [f"{'point':<42} {'CV float':>8} {'int8 8b':>8} {'int8 16b':>8} {'bits':>4} {'MACs/step':>10} "
                 f"{'cycles/step':>12} {'flash B':>8}"]
        for p in r["points"]:
            mark = " <- deployed" if p.get("chosen") else (" (over budget)" if p.get("over") else "")
            int8 = " ".join(next((f"{w['int8_cv_accuracy']:>8.4f}" for w in p["widths"] if w["coeff_bits"] == b),
                                 f"{'-':>8}") for b in COEFF_BITS)   # a QAT point is scored at its own width
            lines.append(f"{p['label']:<42} {p['cv_accuracy']:>8.4f} {int8} {p['coeff_bits']:>4} {p['macs_per_step']:>10,.0f} "
                         f"{p['cycles_per_step']:>12,.0f} {p['flash_bytes']:>8,.0f}{mark}")
        test8 = ", ".join(f"{w['coeff_bits']}-bit {w['accuracy']:.4f}" for w in c["test_int8"])
        lines.append(f"deployed {c['label']} at {c['coeff_bits']}-bit coefficients: int8 CV accuracy "
                     f"{c['int8_cv_accuracy']:.4f} (+-{c['int8_cv_std']:.3f}, {c['cv_evaluations']} fold models), test "
                     f"accuracy float {c['test_accuracy']:.4f}, int8 reference {test8}"
                     + (f", firmware {fw['accuracy']:.4f} ({fw['instructions_per_step']:,.0f} instructions/step, "
                        f"{fw['flash_bytes']:,} B flash, QEMU {fw['cycles_source']})" if fw else "")
                     + f" -> {r['model']} [{r['seconds']:.0f} s]")
        return "\n".join(lines)

    emit(args, res.to_dict(), human)
    return 0


def register(sub):
    d = FitOptions()
    p = sub.add_parser("fit", help="choose width, state size and depth for the data and the board's budget, and train",
                       description="Price every (d_model, d_state, n_layers) of the grid (flash, RAM, MACs, analytic "
                                   "cycles, at 8- and 16-bit recurrence coefficients), cross-validate the largest ones within the "
                                   "budget on the training set (float and int8 integer reference on the held-out folds), try "
                                   "longer training, augmentation and a twice-as-big model pruned to the winner's cycles, repeat the folds "
                                   "for the finalists, try a QAT fine-tune of the best one's fold models, train the best (shape and coefficient width by int8 CV accuracy) "
                                   "on all training data and measure it in QEMU. Writes DIR/model.pt, fit.json, fit.png.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", help="a shipped dataset (see `s4op-micro datasets`)")
    g.add_argument("--data", help="your own .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--root", help="directory with the standard files of smnist")
    p.add_argument("--board", default=d.board, help=f"target board or core (default {d.board})")
    p.add_argument("--out", required=True, help="output directory (model.pt, fit.json, fit.png, export/)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory made by s4op-micro")
    p.add_argument("--max-latency-us", type=positive, help="microseconds per step (one decision) at the board's clock")
    p.add_argument("--max-flash", type=at_least(1), help="model flash bytes (default: the board's)")
    p.add_argument("--max-ram", type=at_least(1), help="model RAM bytes (default: the board's)")
    p.add_argument("--max-macs-per-step", type=at_least(1), help="multiply-accumulates per step")
    p.add_argument("--workers", type=at_least(1), default=d.workers, help="local worker processes (default 1)")
    p.add_argument("--folds", type=at_least(2), default=d.folds, help=f"cross-validation folds (default {d.folds})")
    p.add_argument("--seeds", type=at_least(1), default=d.seeds, help=f"seeds per fold and final models (default {d.seeds})")
    p.add_argument("--repeats", type=at_least(1), default=d.repeats,
                   help=f"K-fold repetitions (fresh splits and seeds) for the finalists (default {d.repeats})")
    p.add_argument("--finalists", type=at_least(1), default=d.finalists,
                   help=f"best points cross-validated --repeats times (default {d.finalists})")
    p.add_argument("--epochs", type=at_least(1), help="epochs per training (default: about 400 updates)")
    p.add_argument("--candidates", type=at_least(1), default=d.candidates,
                   help=f"largest feasible shapes cross-validated (default {d.candidates})")
    p.add_argument("--d-models", type=_ints, default=d.d_models, help="comma list of widths searched")
    p.add_argument("--d-states", type=_ints, default=d.d_states, help="comma list of state sizes searched (even)")
    p.add_argument("--n-layers", type=_ints, default=d.n_layers, help="comma list of depths searched")
    p.add_argument("--no-augment", action="store_true", help="do not try augmentation on the winner")
    p.add_argument("--no-long", action="store_true", help="do not try 4x the training updates on the winner")
    p.add_argument("--no-prune", action="store_true", help="do not try a twice-as-big model pruned to the winner's cycles")
    p.add_argument("--distill", action="store_true",
                   help=f"also try the winner distilled from an ensemble of {TEACHERS} models of its recipe "
                        f"(about {TEACHERS + 1}x its training time; deployed only if its int8 CV accuracy is higher)")
    p.add_argument("--no-qat", action="store_true", help="do not try a quantization-aware fine-tune of the winner")
    p.add_argument("--no-measure", action="store_true", help="do not export and run the chosen model in QEMU")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_fit)
