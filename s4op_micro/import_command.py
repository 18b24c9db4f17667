"""`s4op-micro import`: a checkpoint of another code base -> DIR/model.pt, a normal s4op-micro checkpoint.

The conversion itself is `models.importers.import_checkpoint` (pure). This command adds the data
side: the dataset named with --dataset/--data is recorded (so eval, prune, finetune and export
find it without flags), checked against the model (input channels, classes, tokens, the sequence
length of causal_half pooling), and scored (test accuracy in the checkpoint's metrics). The
recorded normalization is the identity: the original code fed the model raw inputs, and so does
the data pipeline for this checkpoint (train.renormalize undoes the dataset's own normalization).
"""

from pathlib import Path

from .checkpoint import save_checkpoint
from .data import load_dataset
from .errors import UserError
from .models.classifier import POOLINGS
from .models.importers import FORMATS, identity_normalization, import_checkpoint
from .outdir import atomic_output_dir
from .train import add_data_args, dataset_record, evaluate, fit_data_to, n_params


def cmd_import(args):
    from .cli import emit

    data = None
    if args.dataset or args.data:
        data = load_dataset(name=args.dataset, data=args.data, root=args.root, max_train=args.max_train)
        if args.seq_len is not None and args.seq_len != data.seq_len:
            raise UserError(f"--seq-len {args.seq_len} disagrees with the data's sequence length {data.seq_len}; drop --seq-len")
    if args.seq_len is not None and args.seq_len < 2:
        raise UserError(f"--seq-len {args.seq_len} is too short; pass the fixed sequence length (>= 2)")
    seq_len = data.seq_len if data is not None else args.seq_len
    model, meta = import_checkpoint(args.checkpoint, args.format, prenorm=args.prenorm, pooling=args.pooling,
                                    dropout=args.dropout, seq_len=seq_len)
    cfg = model.config
    if data is not None:
        record = dataset_record(data, args)
    else:
        record = {"name": None, "data": None, "root": None, "n_channels": cfg["d_input"], "seq_len": seq_len,
                  "n_classes": cfg["n_classes"], "vocab_size": cfg["vocab_size"], "class_names": [],
                  "source": "none recorded: pass --dataset/--data to eval, prune, finetune and export"}
    ckpt = {"config": cfg, "normalization": identity_normalization(model), "dataset": record}
    metrics = {"imported": meta}
    if data is not None:
        fit_data_to(ckpt, data)  # raises on a mismatch; then the data is raw, as the original saw it
        test = evaluate(model, data.x_test, data.y_test)
        metrics.update(test_accuracy=test["accuracy"], test_loss=test["loss"], val_accuracy=None)
    with atomic_output_dir(args.out, force=args.force) as tmp:
        save_checkpoint(tmp / "model.pt", model, ckpt["normalization"], record, metrics)
    H = cfg["d_model"]
    result = {"model": str(Path(args.out) / "model.pt"), "format": args.format, "config": cfg, "params": n_params(model),
              "operators_active": [len(a) for a in model.active_operators], "operators_total": H * cfg["n_layers"],
              "dataset": data.name if data is not None else None, "accuracy": metrics.get("test_accuracy")}

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


def register(sub):
    p = sub.add_parser("import", help="convert a state-spaces/s4 example.py or S4oP checkpoint",
                       description="Convert a checkpoint of state-spaces/s4 example.py (S4Model + S4D) or PARCO-LAB/S4oP "
                                   "(S4D + LayerS4D) into DIR/model.pt, which eval, info, prune, finetune and export take. "
                                   "Sizes come from the tensor shapes; the rest from the flags below.")
    p.add_argument("checkpoint", help="the .pt/.pth file the original code saved")
    p.add_argument("--format", required=True, choices=FORMATS, help="the code base that wrote it")
    p.add_argument("--out", required=True, help="output directory (gets model.pt)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.add_argument("--prenorm", action="store_true", help="the model was built with pre-norm blocks (default post-norm)")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="mean over all steps (default), or causal_half (S4oP: mean over steps L//2 .. L-1)")
    p.add_argument("--dropout", type=float, help="the model's dropout, kept for fine-tuning (default: example.py's 0.1; "
                                                 "S4oP 0.0)")
    p.add_argument("--seq-len", type=int, help="fixed sequence length (default: the dataset's; causal_half needs one)")
    add_data_args(p, required=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_import)
