"""Commands: `datasets`, `train`, `eval`, `info`, `import`."""

from ..data import list_datasets
from ..models.classifier import POOLINGS
from ..models.importers import FORMATS
from ..models.layer import KERNELS
from ..train import AUGMENTATIONS, VAL_FRACTION, checkpoint_info, evaluate_checkpoint, import_model, train
from .common import add_data_args, at_least, data_source, emit, in_range, positive


def cmd_datasets(args):
    def human(r):
        rows = [("name", "train", "test", "L", "C", "classes", "offline", "source")]
        for d in r["datasets"]:
            rows.append((d["name"], *map(str, d["shape"]), str(d["n_classes"]), "yes" if d["offline"] else "no", d["source"]))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)

    emit(args, {"datasets": list_datasets()}, human)
    return 0


def cmd_train(args):
    res = train(out=args.out, **data_source(args), epochs=args.epochs, d_model=args.d_model, d_state=args.d_state,
                n_layers=args.n_layers, lr=args.lr, batch_size=args.batch_size, val_fraction=args.val_fraction,
                augment=args.augment, ssm=args.ssm, norm=args.norm, prenorm=args.prenorm, dropout=args.dropout,
                init=args.init, disc=args.disc, seed=args.seed, force=args.force, progress=not args.quiet)
    emit(args, res.to_dict(), lambda r: (
        f"trained {r['dataset']}: test accuracy {r['accuracy']:.4f} "
        + (f"(val {r['val_accuracy']:.4f}), " if r["val_accuracy"] is not None else "(no validation split, last epoch), ")
        + f"{r['params']} parameters, {r['train_seconds']:.1f} s -> {r['model']}"))
    return 0


def cmd_eval(args):
    res = evaluate_checkpoint(args.model, **data_source(args))
    emit(args, res, lambda r: (
        f"{r['dataset']}: test accuracy {r['accuracy']:.4f} ({r['n']} sequences), loss {r['loss']:.4f}\n"
        + "per class [correct/total]: " + ", ".join(f"{c}/{t}" for c, t in r["per_class"])))
    return 0


def cmd_info(args):
    def human(r):
        cfg, H = r["config"], r["config"]["d_model"]
        lines = [f"model {args.model}: {cfg['ssm']} x{cfg['n_layers']}, H={H}, N={cfg['d_state']}, "
                 f"{r['params']} parameters, dataset {r['dataset'].get('name') or r['dataset'].get('data')}"]
        for i, (act, rem) in enumerate(zip(r["active_operators"], r["removed_operators"])):
            lines.append(f"  layer {i}: {len(act)}/{H} operators active, {len(rem)} removed, {H - len(act) - len(rem)} bypassed"
                         + (f"  active={act}" if len(act) < H else ""))
        acc = r["metrics"].get("test_accuracy")
        if acc is not None:
            lines.append(f"  test accuracy {acc:.4f}")
        return "\n".join(lines)

    emit(args, checkpoint_info(args.model), human)
    return 0


def register(sub):
    p = sub.add_parser("datasets", help="list the datasets (shapes, classes, source, offline availability)",
                       description="List the named datasets. Your own data: --data FILE.npz with x_train, y_train, x_test, y_test.")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train an S4D/S4 classifier",
                       description="Train an S4D/S4 sequence classifier; writes DIR/model.pt. Hyperparameters not given "
                                   "take the dataset's defaults (generic ones for --data).")
    add_data_args(p)
    p.add_argument("--out", required=True, help="output directory (gets model.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory made by s4op-micro")
    p.add_argument("--epochs", type=at_least(1), help="training epochs, >= 1 (default: per dataset)")
    p.add_argument("--d-model", type=at_least(1), help="channels H, >= 1 (default: per dataset)")
    p.add_argument("--d-state", type=at_least(2), help="state size N per channel, even, >= 2 (default: per dataset)")
    p.add_argument("--n-layers", type=at_least(1), help="SSM blocks, >= 1 (default: per dataset)")
    p.add_argument("--lr", type=positive, help="learning rate, > 0 (default: per dataset)")
    p.add_argument("--batch-size", type=at_least(1), help="sequences per batch, >= 1 (default: per dataset)")
    p.add_argument("--val-fraction", type=in_range(0, 1), help=f"training sequences held out to pick the best epoch, "
                   f"in [0, 1) (default {VAL_FRACTION}, per dataset); 0: train on all of them and keep the last epoch")
    p.add_argument("--augment", help=f"comma list of {', '.join(AUGMENTATIONS)}, or none (default: per dataset)")
    p.add_argument("--ssm", choices=sorted(KERNELS), default="s4d", help="layer kind (default s4d)")
    p.add_argument("--norm", choices=["batch", "layer"], default="batch",
                   help="batch (default; folded into the integer model at export) or layer (an integer LayerNorm "
                        "per step at export: a few %% more instructions)")
    p.add_argument("--prenorm", action="store_true", help="pre-norm blocks (default post-norm)")
    p.add_argument("--dropout", type=in_range(0, 1), default=0.0, help="dropout in [0, 1) (default 0)")
    p.add_argument("--init", choices=["lin", "inv", "real"], default="lin", help="S4D initialization (default lin)")
    p.add_argument("--disc", choices=["zoh", "bilinear"], help="discretization (default zoh for s4d, bilinear for s4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test accuracy of a checkpoint",
                       description="Test accuracy, loss and per-class counts of a checkpoint on its dataset (or another).")
    p.add_argument("model", help="checkpoint (model.pt)")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("info", help="configuration, parameters and active operators of a checkpoint",
                       description="Print a checkpoint's configuration, parameter count, dataset, metrics and, per "
                                   "layer, its active, bypassed and removed operators.")
    p.add_argument("model", help="checkpoint (model.pt)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    register_import(sub)


def cmd_import(args):
    result = import_model(args.checkpoint, fmt=args.format, out=args.out, prenorm=args.prenorm, pooling=args.pooling,
                          dropout=args.dropout, seq_len=args.seq_len, force=args.force, **data_source(args))

    def human(r):
        c = r["config"]
        kind = f"{c['norm']}norm {'pre' if c['prenorm'] else 'post'}-norm, {c['pooling']} pooling"
        acc = (f"; test accuracy {r['accuracy']:.4f} on {r['dataset']}" if r["accuracy"] is not None
               else "; no dataset recorded (pass --dataset/--data to eval/prune/export)")
        return (f"imported {args.format} {args.checkpoint}: s4d x{c['n_layers']}, H={c['d_model']}, N={c['d_state']}, "
                f"{sum(r['operators_active'])}/{r['operators_total']} operators active, {kind}, {r['params']} parameters"
                f"{acc} -> {r['model']}")

    emit(args, result, human)
    return 0


def register_import(sub):
    p = sub.add_parser("import", help="convert a state-spaces/s4 example.py or S4oP checkpoint",
                       description="Convert a checkpoint of state-spaces/s4 example.py (S4Model + S4D) or PARCO-LAB/S4oP "
                                   "(S4D + LayerS4D) into DIR/model.pt, which eval, info, prune, finetune and export take. "
                                   "Sizes come from the tensor shapes; the rest from the flags below.")
    p.add_argument("checkpoint", help="the .pt/.pth file the original code saved")
    p.add_argument("--format", required=True, choices=FORMATS, help="the code base that wrote it")
    p.add_argument("--out", required=True, help="output directory (gets model.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory made by s4op-micro")
    p.add_argument("--prenorm", action="store_true", help="the model was built with pre-norm blocks (default post-norm)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="mean over all steps (default), or causal_half (S4oP: mean over steps L//2 .. L-1)")
    p.add_argument("--dropout", type=in_range(0, 1), help="the model's dropout, kept for fine-tuning (default: example.py's 0.1; "
                                                 "S4oP 0.0)")
    p.add_argument("--seq-len", type=at_least(2), help="fixed sequence length (default: the dataset's; causal_half needs one)")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_import)
