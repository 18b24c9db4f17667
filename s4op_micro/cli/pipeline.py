"""Command: `pipeline`."""

from ..pipeline import STAGES, PipelineOptions, pipeline
from .common import at_least, emit, positive


def cmd_pipeline(args):
    o = PipelineOptions(dataset=args.dataset, data=args.data, board=args.board, epochs=args.epochs, rates=args.rates,
                        guided_rates=args.guided_rates,
                        seeds=args.seeds, finetune_epochs=args.finetune_epochs, max_drop=args.max_drop,
                        limit=args.limit, seed=args.seed, redo=args.redo, model=args.model,
                        fit=args.fit, max_macs_per_step=args.max_macs_per_step, max_latency_us=args.max_latency_us)
    res = pipeline(out=args.out, options=o)
    emit(args, {k: v for k, v in res.items() if k != "table"}, lambda r: res["table"])
    return 0


def register(sub):
    d = PipelineOptions()
    p = sub.add_parser("pipeline", help="the main job end to end, resumable",
                       description="Run " + " -> ".join(STAGES) + " into --out. A finished stage is not redone while "
                                   "every input that produced it is unchanged; a changed input redoes it and the "
                                   "stages after it. Prints the results table (RUN/results.md).")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--dataset", help="a shipped dataset (see `s4op-micro datasets`)")
    g.add_argument("--data", help="your own .npz with x_train, y_train, x_test, y_test")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", help="start from this checkpoint (e.g. from `s4op-micro import`) instead of training one")
    p.add_argument("--fit", action="store_true", help="train stage: `s4op-micro fit` chooses width, state size and "
                   "depth for the data and the board's budget by cross-validation (instead of the dataset's defaults)")
    p.add_argument("--max-macs-per-step", type=at_least(1), help="with --fit: MACs per step the model may cost")
    p.add_argument("--max-latency-us", type=positive, help="with --fit: microseconds per step at the board's clock")
    p.add_argument("--board", default=d.board, help=f"target board or core with a QEMU machine (default {d.board})")
    p.add_argument("--redo", nargs="*", default=[], choices=STAGES, help="redo these stages (and those after them)")
    p.add_argument("--epochs", type=at_least(1), help="training epochs, >= 1 (default: per dataset)")
    p.add_argument("--rates", default=d.rates, help=f"the s4op stage's pruning rates (default {d.rates})")
    p.add_argument("--guided-rates", default=d.guided_rates,
                   help=f"the guided stage's milestones, fine-tuned and kept, before it goes on to half the cycles "
                        f"(default {d.guided_rates})")
    p.add_argument("--seeds", type=at_least(1), default=d.seeds, help=f"pruning candidates per rate (default {d.seeds})")
    p.add_argument("--finetune-epochs", type=at_least(1), default=d.finetune_epochs,
                   help=f"epochs per candidate fine-tune (default {d.finetune_epochs})")
    p.add_argument("--max-drop", type=at_least(0.0, float), default=d.max_drop,
                   help=f"accuracy points the deployed pruned model may lose on the selection set: validation + training "
                        f"sequences (default {d.max_drop:g})")
    p.add_argument("--limit", type=at_least(1), help="test sequences for the firmware and TFLM stages (default: all)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_pipeline)
