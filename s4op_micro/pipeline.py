"""`pipeline(...)`: the main job, every stage in order, resumable.

    train -> prune (s4op, then guided) -> export (C + TFLM) -> build -> emulate (QEMU) -> tflm

With fit=True the train stage is `s4op-micro fit` (the model's shape chosen for the data and the
board's budget by cross-validation, fit.py; without its pruned path: the prune stages follow) instead
of `train` with the dataset's defaults.
With model= (a checkpoint, e.g. from `s4op-micro import`) the train stage evaluates it instead of
training one, and the later stages start from it.

Each stage calls the same typed function as its own subcommand and writes into RUN/<stage>/; its
result is recorded in RUN/stages.json with a key made of every input that produced it (its
options, the data file's content, the checkpoint it read, the s4op-micro version, and the key of
the stage before it). A recorded stage whose key still matches is not redone; a changed input
redoes that stage and every later one, and says so. Two models go through export and the firmware
stages: the trained one (`base`) and the pruned one the job keeps (`pruned`: the cheapest guided
model within max_drop accuracy points of the base on the selection set, validation + training
sequences; the base itself when none is). The results table is saved as RUN/results.md and
RUN/results.json, the plots as RUN/prune/pareto.png and RUN/layers.png.
"""

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, deploy
from .core.boards import get_board
from .core.checks import emulated_board
from .core.errors import UserError
from .core.outdir import MARKER, check_output_path
from .core.progress import log
from .data import load_dataset
from .fit import FitOptions, fit
from .models.checkpoint import load_checkpoint, load_model
from .prune import pareto
from .prune.api import PruneOptions, parse_rates, prune
from .prune.finetune import within_drop
from .prune.operators import Lineage, pruned_fraction
from .toolchain.build import build
from .train import evaluate_checkpoint, train

STAGES = ["train", "prune-s4op", "prune-guided", "export", "build", "emulate", "tflm"]
MODELS = ("base", "pruned")
START = ("unpruned", "start")   # pareto.json's entry of the model pruning started from (an imported one may be pruned)
# The guided stage: operators, modes and whole residual channels (a narrower d_model), every kept
# model measured in QEMU, through the milestones of guided_rates (each fine-tuned: measured, four
# gentle milestones kept more accuracy at 2x than two, gunpoint 0.0 vs 4.0 points lost, arrowhead -4.6
# vs 1.1 in bench_prune's setting), then on until the measured cycles per step are halved (with a
# margin for the test set's data-dependent branches); cheapest_within then keeps the cheapest model
# within --max-drop on the selection set (the controller does not stop at it: one rate's model can
# lose a sequence that a cheaper one keeps).
GUIDED = dict(granularity="operator,mode,width", latency="emulator", target_ratio=0.49)
S4OP = dict(latency="emulator")  # its kept models measured too: one cycle axis in pareto.png


@dataclass
class PipelineOptions:
    dataset: str = None
    data: str = None
    board: str = "cortex-m7"
    epochs: int = None             # training epochs (None: the dataset's default)
    rates: str = "0.5,0.7"         # the s4op stage's rates
    guided_rates: str = "0.1,0.3,0.5,0.7"  # the guided stage's milestones before it goes on to half the cycles
    seeds: int = 4
    finetune_epochs: int = 5
    max_drop: float = 1.0
    limit: int = None              # test sequences for the firmware and TFLM stages (None: all)
    seed: int = 0
    redo: list = field(default_factory=list)
    model: str = None              # start from this checkpoint (e.g. from `s4op-micro import`) instead of training
    fit: bool = False              # train stage: `s4op-micro fit` (shape chosen for the data and budget by CV)
    max_macs_per_step: int = None  # fit's budget besides the board's flash and RAM
    max_latency_us: float = None


def base_checkpoint(o, run):
    """The model the job prunes and deploys: --model's checkpoint, or the one the train stage writes."""
    return Path(o.model).resolve() if o.model else run / "train" / "model.pt"


def validate(o, run):
    """Every input of every stage, checked before stage one (nothing is written on a refusal)."""
    if (o.dataset is None) == (o.data is None):
        raise UserError("pass exactly one of --dataset NAME or --data FILE.npz")
    emulated_board(get_board(o.board), "run the pipeline's firmware stages")
    parse_rates(o.rates)
    parse_rates(o.guided_rates, "--guided-rates")
    for name, value, low in (("epochs", o.epochs, 1), ("seeds", o.seeds, 1), ("finetune-epochs", o.finetune_epochs, 1),
                             ("limit", o.limit, 1)):
        if value is not None and value < low:
            raise UserError(f"--{name} must be at least {low}, not {value}")
    if not o.max_drop >= 0:
        raise UserError(f"--max-drop is the accuracy points the pruned model may lose: 0 or more, not {o.max_drop}")
    unknown = [s for s in o.redo if s not in STAGES]
    if unknown:
        raise UserError(f"--redo {unknown[0]!r} is not a stage; stages: {', '.join(STAGES)}")
    if o.fit and o.model:
        raise UserError("--fit trains a model of its own; drop --model or --fit")
    if not o.fit and (o.max_macs_per_step or o.max_latency_us):
        raise UserError("--max-macs-per-step/--max-latency-us are fit's budget; add --fit")
    if o.model and not Path(o.model).is_file():
        raise UserError(f"--model {o.model} not found; pass a checkpoint from `s4op-micro train` or `import`")
    if run.exists() and not (run / "stages.json").is_file() and any(run.iterdir()):
        raise UserError(f"{run} holds files that are not a pipeline run (no stages.json); pass another --out")
    if not run.exists():
        check_output_path(run)
    load_dataset(name=o.dataset, data=o.data)   # an unknown name or a broken file fails here


def _file_hash(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def stage_inputs(stage, o, run, previous_key):
    """What a stage's result depends on (shown when it changes)."""
    common = {"version": __version__, "after": previous_key}
    if stage == "train":
        data = {"dataset": o.dataset} if o.dataset else {"data": str(o.data), "data_sha256": _file_hash(o.data)}
        model = {"model": str(o.model), "model_sha256": _file_hash(o.model)} if o.model else {}
        fitted = {"fit": True, "board": o.board, "max_macs_per_step": o.max_macs_per_step,
                  "max_latency_us": o.max_latency_us} if o.fit else {}
        return {**common, **data, **model, "epochs": o.epochs, "seed": o.seed, **fitted}
    if stage.startswith("prune-"):
        rates = o.guided_rates if stage == "prune-guided" else o.rates
        return {**common, "rates": rates, "seeds": o.seeds, "finetune_epochs": o.finetune_epochs, "seed": o.seed,
                "board": o.board, "checkpoint_sha256": _file_hash(base_checkpoint(o, run)),
                "settings": GUIDED if stage == "prune-guided" else S4OP}
    if stage == "export":
        return {**common, "board": o.board, "max_drop": o.max_drop}
    if stage == "build":
        return {**common, "board": o.board}
    return {**common, "limit": o.limit}


def _key(inputs):
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def cheapest_within(models, max_drop):
    """Among pareto.json's models, the cheapest guided one whose accuracy on the selection set
    (validation + training sequences, prune.finetune.selection_set) is within max_drop points of the
    start model's, or one selection sequence where that is more (prune.finetune.within_drop). Scoring
    the integer reference there instead was measured worse on the main job: on gunpoint it rejected
    the 2.1x model for one of 50 sequences (its test accuracy: 0.67 points below the base's firmware),
    and on digits it let the same 2.2x model through as the float score (int8 -0.2 points on 543
    sequences, -1.7 on the test set). Test accuracy decides nothing: it is what we
    report. None when no pruned model qualifies."""
    key = "selection_accuracy"
    guided = [m for m in models if m["strategy"] == "guided"]
    start = next((m[key] for m in models if m["strategy"] in START), None)
    within = [m for m in guided if start is not None
              and within_drop(start, m[key], max_drop, m.get("selection_n"))]
    return min(within, key=lambda m: (m["cycles_per_step"], -m[key])) if within else None


def selection_blind(models):
    """True when the selection set scored the start model and every guided one alike (arrowhead's 36
    sequences: 1.000 for all, at every seed run): then --max-drop cannot bind, the cycle target alone
    chose, and only the test set shows what pruning cost. The main job says so instead of claiming a
    budget it could not check."""
    key = "selection_accuracy"
    return len({round(m[key], 9) for m in models if m["strategy"] in START or m["strategy"] == "guided"}) == 1


def milestones_after(rates, checkpoint):
    """The guided milestones above the state fraction the checkpoint is already pruned to (an imported
    S4oP model may start past some); none left: one halfway from there to fully pruned."""
    model, ckpt = load_model(checkpoint)
    start = pruned_fraction(model, Lineage.of(model, ckpt.get("pruning")))
    left = [r for r in parse_rates(rates, "--guided-rates") if r > start + 1e-9]
    return ",".join(f"{r:g}" for r in left) if left else f"{(1 + start) / 2:.4f}"


def coeff_bits_of(checkpoint):
    """The recurrence coefficient width `fit` chose for this model by int8 CV (8 for other models)."""
    return load_checkpoint(checkpoint)["metrics"].get("fit", {}).get("coeff_bits", 8)


def _pareto_models(run):
    return json.loads((run / "prune" / "pareto.json").read_text())["models"]


def run_stage(stage, o, run, results):
    data = {"dataset": o.dataset, "data": o.data}
    base = base_checkpoint(o, run)
    exports = {"base": run / "export" / "base", "pruned": run / "export" / "pruned"}
    if stage == "train" and o.model:
        return {"base": dict(evaluate_checkpoint(base, **data), model=str(base))}
    if stage == "train" and o.fit:
        return {"base": fit(out=run / "train", force=True, options=FitOptions(
            dataset=o.dataset, data=o.data, board=o.board, epochs=o.epochs, seed=o.seed, measure=False, prune=False,
            max_macs_per_step=o.max_macs_per_step, max_latency_us=o.max_latency_us)).to_dict()}
    if stage == "train":
        return {"base": train(out=run / "train", epochs=o.epochs, seed=o.seed, force=True, **data).to_dict()}
    if stage.startswith("prune-"):
        strategy = stage.split("-", 1)[1]
        rates = milestones_after(o.guided_rates, base) if strategy == "guided" else o.rates
        options = PruneOptions(strategy=strategy, coeff_bits=coeff_bits_of(base), rates=rates, seeds=o.seeds,
                               finetune_epochs=o.finetune_epochs, board=o.board, seed=o.seed,
                               data_source={k: v for k, v in data.items() if v},
                               **(GUIDED if strategy == "guided" else S4OP))
        return {strategy: prune(base, run / "prune", options, measure=deploy.firmware_measure).to_dict()}
    if stage == "export":
        models = _pareto_models(run)
        pick = cheapest_within(models, o.max_drop)
        blind = pick is not None and selection_blind(models)
        if pick is None:
            log("pipeline", f"no pruned model is within --max-drop {o.max_drop:g} points of the base: "
                "deploying the base model as `pruned` too")
        elif blind:
            log("pipeline", f"warning: the selection set ({pick.get('selection_n')} sequences) scored every model "
                f"{pick['selection_accuracy']:.3f}, as the base: --max-drop could not bind; see the test columns")
        chosen = ({**pick, "within_budget": True, "selection_blind": blind} if pick else
                  {"strategy": "none", "rate": 0.0, "path": str(base), "within_budget": False})
        pareto.mark_chosen(run / "prune", chosen["path"] if pick else
                           next(m["path"] for m in models if m["strategy"] in START),
                           ("deployed (selection set blind)" if blind else "deployed") if pick
                           else "deployed (none within --max-drop)")
        out = {"chosen": chosen}
        for name, model in (("base", base), ("pruned", chosen["path"])):
            out[name] = deploy.export(model, board=o.board, out=exports[name], formats="c,tflm", force=True,
                                      coeff_bits=coeff_bits_of(base), **data).to_dict()
        return out
    if stage == "build":
        board = get_board(o.board)
        return {m: dict(build(exports[m], board).to_dict(), board_flash_bytes=board.flash_bytes,
                        board_ram_bytes=board.ram_bytes) for m in MODELS}
    target = {"emulate": "qemu", "tflm": "tflm"}[stage]
    out = {}
    for m in MODELS:
        res = deploy.run(exports[m], target=target, board=o.board if target == "qemu" else None, limit=o.limit, **data)
        if res["mismatches"]:
            raise UserError(f"the {m} model's {target} run differs from the integer reference on {res['mismatches']} "
                            f"sequences; run `s4op-micro run {exports[m]} ...` to see the first one")
        out[m] = res
    return out


def pipeline(*, out, options=None) -> dict:
    """Run (or resume) the main job into the directory `out`; returns {"rows", "table", "stages"}."""
    o = options or PipelineOptions()
    run = Path(out)
    validate(o, run)
    run.mkdir(parents=True, exist_ok=True)
    (run / MARKER).write_text("made by s4op-micro pipeline\n")
    record_path = run / "stages.json"
    record = _read_record(record_path)
    results, keys = record.setdefault("results", {}), record.setdefault("keys", {})
    redo_from = min((STAGES.index(s) for s in o.redo), default=len(STAGES))
    previous_key = None
    for i, stage in enumerate(STAGES):
        inputs = stage_inputs(stage, o, run, previous_key)
        key = _key(inputs)
        tag = f"{i + 1}/{len(STAGES)} {stage}"
        old = keys.get(stage)
        if stage in results and i < redo_from and old and old["key"] == key:
            log(tag, f"done before, same inputs (--redo {stage} redoes it)")
        else:
            if stage in results and old and old["key"] != key:
                changed = sorted(k for k in inputs if old["inputs"].get(k) != inputs[k] and k != "after")
                log(tag, "inputs changed (" + (", ".join(f"{k}: {old['inputs'].get(k)} -> {inputs[k]}" for k in changed)
                                               or "an earlier stage was redone") + "): redoing it")
                redo_from = min(redo_from, i)
            else:
                log(tag, "running")
            start = time.time()
            results.pop(stage, None)
            results[stage] = run_stage(stage, o, run, results)
            results[stage]["seconds"] = round(time.time() - start, 1)
            keys[stage] = {"key": key, "inputs": inputs}
            record_path.write_text(json.dumps(record, indent=1))
        previous_key = key
    rows = results_rows(results)
    table = results_table(results, o.board)
    (run / "results.md").write_text(table + "\n")
    (run / "results.json").write_text(json.dumps({"rows": rows, "stages": results}, indent=1))
    plot_layers(results, run / "layers.png")
    return {"run": str(run), "rows": rows, "chosen": results["export"]["chosen"], "table": table}


def _read_record(path):
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is corrupt (not JSON); delete it to start the run over, or pass another --out") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is not a pipeline record; delete it or pass another --out")
    return record


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
            "firmware_flash_bytes": results["build"][m]["flash_bytes"], "firmware_ram_bytes": results["build"][m]["ram_bytes"],
            "instructions/step": emu["instructions_per_step"], "cycles/step": emu["cycles_per_step"],
            "cycles_source": emu["cycles_source"],
        })
    return rows


def results_table(results, board):
    rows = results_rows(results)
    cols = ["model", "float", "int8 ref", "firmware", "tflm", "mismatches", "tflm max LSB", "operators",
            "flash_bytes", "ram_bytes", "firmware_flash_bytes", "firmware_ram_bytes", "instructions/step", "cycles/step"]
    heads = {"flash_bytes": "model flash B", "ram_bytes": "model RAM B", "firmware_flash_bytes": "firmware flash B",
             "firmware_ram_bytes": "firmware RAM B"}

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4f}" if v <= 1.0 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    lines = ["| " + " | ".join(heads.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    chosen = results["export"]["chosen"]
    base, pruned = rows
    what = (f"{chosen['strategy']} at {chosen['rate']:.0%} of the state (d_model {chosen.get('d_model', '-')}), "
            "the cheapest within the accuracy budget"
            if chosen["within_budget"] else "none met the accuracy budget: the base model is deployed")
    if chosen.get("selection_blind"):
        what += (f" (but the selection set, {chosen.get('selection_n')} sequences, scored the base and every guided "
                 f"model {chosen['selection_accuracy']:.3f}: the budget could not bind on this data, the cycle target "
                 "chose, and only the test columns show what pruning cost)")
    lines += [
        "",
        f"board {board}; accuracies are test-set fractions (float = PyTorch, int8 ref = numpy integer reference, "
        f"firmware = QEMU, tflm = TFLM runtime); mismatches: test sequences whose firmware scores differ from "
        f"the integer reference; tflm max LSB: largest TFLM score difference from it.",
        "model flash/RAM: the model's own code and data (s4op_model.c + s4op_weights.c, -Os); firmware flash/RAM: "
        "the whole benchmark image (model, harness, start-up code, libc, stack), without the test vectors.",
        f"pruned model: {what}; {base['instructions/step'] / pruned['instructions/step']:.2f}x fewer instructions "
        "per step than the base.",
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
    n_layers = 0
    for k, m in enumerate(MODELS):
        layers = results["emulate"][m].get("layers", [])
        n_layers = max(n_layers, len(layers))
        ax.bar([layer["layer"] + (k - 0.5) * width for layer in layers], [layer["instructions_per_step"] for layer in layers],
               width, label=m)
    ax.set_xticks(range(n_layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("instructions per step (QEMU, measured)")
    ax.set_title("per-layer cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
