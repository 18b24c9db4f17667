"""`prune(...)`: a trained model in, pruned checkpoints, DIR/pareto.json and DIR/pareto.png out.

Checks every input before any work (one-line UserError, nothing written), prunes with the chosen
strategy (controller.py), and writes DIR/pruned_<pct>.pt per kept model (its `pruning` key records
the strategy, the rate, what went, step by step, and the fine-tune recipe). The fine-tunes follow
recipe.FinetuneRecipe: S4oP's published one for s4op, guided's own for guided; the fine-tune options
given (finetune_epochs, patience, lr, seeds, batch_size) override it and are recorded. Measuring
firmware is not this layer's job:
the `emulator` and `board` latency oracles call the `measure` function the caller hands in.
"""

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.boards import get_board
from ..core.checks import coeff_bits as check_coeff_bits
from ..core.errors import UserError
from ..core.outdir import atomic_output_dir
from ..models.checkpoint import load_model, save_checkpoint
from ..quant.cost import cost_report
from ..train import GENERIC_DEFAULTS, evaluate, load_data_for, parse_augment
from . import pareto
from .controller import DEFAULT_RATES, GRANULARITIES, STRATEGIES, Candidate, Context, Settings, run
from .finetune import check_device, selection_set
from .importance import SCORES
from .latency import make_oracle
from .operators import Lineage, effective_params, operators_kept, pruned_fraction, summary
from .parallel import Executor
from .recipe import FinetuneRecipe, parse_seeds


@dataclass
class PruneResult:
    out: str                 # the output directory
    strategy: str
    board: str
    cycles_source: str       # how the cycle figures were made
    models: list             # one entry per model: the start model, then one per kept rate (pareto.json rows)
    stopped: str = None      # why the controller stopped early, if it did
    seconds: float = 0.0

    def to_dict(self):
        return asdict(self)


@dataclass
class PruneOptions:
    """Everything `prune` takes besides the model and the output directory (the CLI's flags)."""
    strategy: str = "guided"
    rates: str = None                 # comma list of increasing fractions; None: DEFAULT_RATES
    seeds: str = None                 # the fine-tune options: None takes the strategy's recipe
    finetune_epochs: int = None
    patience: int = None
    lr: float = None
    batch_size: int = None
    score: str = "taylor"
    granularity: str = "operator"
    max_drop: float = None
    target_cycles: float = None
    target_ratio: float = None
    max_latency_us: float = None      # at the board's clock: a cycle budget of max_latency_us * MHz
    max_flash: int = None             # bytes, quant.cost.cost_report's estimate of the model
    max_ram: int = None
    latency: str = "analytic"
    board: str = "cortex-m7"
    workers: int = 1
    ray_address: str = None
    device: str = "cpu"
    qat: bool = False
    coeff_bits: int = 8
    seed: int = 0
    data_source: dict = field(default_factory=dict)   # dataset / data / root / max_train overrides


def parse_rates(text, flag="--rates"):
    try:
        rates = [float(r) for r in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r}: give comma-separated fractions, e.g. 0.1,0.3,0.5") from None
    if not all(0 < r < 1 for r in rates):
        raise UserError(f"{flag} {text!r}: every rate must be a fraction in (0, 1)")
    if any(b <= a for a, b in zip(rates, rates[1:])):
        raise UserError(f"{flag} {text!r}: rates must be strictly increasing")
    return rates


def parse_granularity(text, strategy, ssm, latency="analytic"):
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in GRANULARITIES]
    if unknown or not kinds:
        raise UserError(f"unknown granularity {','.join(unknown) or text!r}; choose from {', '.join(GRANULARITIES)} (comma-separated)")
    if strategy == "s4op" and kinds != ["operator"]:
        raise UserError("--strategy s4op prunes operators only (as published); other granularities need --strategy guided")
    if "mode" in kinds and ssm != "s4d":
        raise UserError("--granularity mode needs an S4D model (S4's DPLR modes are coupled)")
    if "width" in kinds and latency.startswith("lut:"):
        raise UserError("--granularity width narrows d_model, which a per-layer table (--latency lut:FILE) cannot "
                        "price; use --latency analytic or emulator")
    return tuple(kinds)


def settings_from(o, model_path, model, ckpt, start_rate, log):
    if o.strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {o.strategy!r}; choose from {', '.join(STRATEGIES)}")
    if o.score not in SCORES:
        raise UserError(f"unknown score {o.score!r}; choose from {', '.join(SCORES)}")
    rates = parse_rates(o.rates) if o.rates else list(DEFAULT_RATES)
    if start_rate > rates[0] + 1e-9:
        raise UserError(f"{model_path} is already pruned to {start_rate:.1%} of its state, beyond the first rate "
                        f"{rates[0]:.0%}; pass --rates above {start_rate:.0%}")
    for name in ("finetune_epochs", "workers", "batch_size"):
        if getattr(o, name) is not None and getattr(o, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if o.patience is not None and o.patience < 0:
        raise UserError("--patience must be 0 or more (epochs without improvement before a fine-tune stops)")
    if o.lr is not None and not o.lr > 0:
        raise UserError(f"--lr must be positive, not {o.lr}")
    if o.max_drop is not None and not o.max_drop >= 0:
        raise UserError(f"--max-drop is the accuracy points the pruned model may lose: 0 or more, not {o.max_drop}")
    if o.target_cycles is not None and not o.target_cycles > 0:
        raise UserError("--target-cycles must be positive (cycles per timestep)")
    if o.target_ratio is not None and not 0 < o.target_ratio < 1:
        raise UserError("--target-ratio is the fraction of the unpruned model's cycles to reach, in (0, 1)")
    for name in ("max_latency_us", "max_flash", "max_ram"):
        if getattr(o, name) is not None and not getattr(o, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    budgets = (o.target_cycles, o.target_ratio, o.max_latency_us, o.max_flash, o.max_ram)
    if o.strategy == "s4op" and (o.max_drop is not None or any(b is not None for b in budgets)):
        raise UserError("--max-drop/--target-cycles/--target-ratio/--max-latency-us/--max-flash/--max-ram steer "
                        "--strategy guided; s4op runs every rate")
    max_drop = o.max_drop
    if o.strategy == "guided" and max_drop is None and not o.rates and all(b is None for b in budgets):
        max_drop = 1.0  # guided on its own: prune until it costs a point of accuracy
    return Settings(
        recipe=recipe_from(o, ckpt), strategy=o.strategy, rates=rates, score=o.score,
        granularity=parse_granularity(o.granularity, o.strategy, model.config["ssm"], o.latency),
        max_drop=max_drop, target_cycles=o.target_cycles, max_flash=o.max_flash, max_ram=o.max_ram,
        device=check_device(o.device),
        qat=o.qat, coeff_bits=o.coeff_bits, bars=log is not None, log=log or (lambda msg: None))


OVERRIDES = {"--finetune-epochs": "finetune_epochs", "--patience": "patience", "--lr": "lr", "--seeds": "seeds",
             "--batch-size": "batch_size"}


def recipe_from(o, ckpt):
    """The strategy's fine-tune recipe (s4op: published, per dataset; guided: its own, from the
    training's hyperparameters), with the options given in place of its values."""
    hp = {**GENERIC_DEFAULTS, **ckpt["metrics"].get("hyperparameters", {})}
    given = dict(epochs=o.finetune_epochs, patience=o.patience, lr=o.lr,
                 seeds=None if o.seeds is None else parse_seeds(o.seeds))
    batch_size = o.batch_size or hp["batch_size"]
    if o.strategy == "s4op":
        src = o.data_source
        dataset = src.get("dataset") or (None if src.get("data") else ckpt["dataset"].get("name"))
        recipe = FinetuneRecipe.published_s4op(dataset, batch_size, **given)
    else:
        recipe = FinetuneRecipe.guided(hp["lr"], batch_size, parse_augment(hp["augment"]), o.seed, **given)
    return recipe.with_overrides(flag for flag, name in OVERRIDES.items() if getattr(o, name) is not None)


def prune(model_path, out, options=None, *, force=False, quiet=False, measure=None):
    """Prune the checkpoint at model_path into the directory `out` (the other strategy's results in
    it are kept; force replaces it). measure: the firmware measurement for --latency emulator/board
    (s4op_micro.measure.emulator.measure_cycles). Returns a PruneResult."""
    o = options or PruneOptions()
    started = time.time()
    log = None if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    board = get_board(o.board)
    check_coeff_bits(o.coeff_bits)
    model, ckpt = load_model(model_path)
    lineage = Lineage.of(model, ckpt.get("pruning"))
    start_rate = pruned_fraction(model, lineage)
    settings = settings_from(o, model_path, model, ckpt, start_rate, log)
    data = load_data_for(ckpt, **o.data_source)
    oracle = make_oracle(o.latency, board, lineage, o.coeff_bits, calib_x=data.x_train[:256], measure=measure)
    start = Candidate(model, lineage, list((ckpt.get("pruning") or {}).get("history", [])))
    base_cycles = oracle.cycles(model, lineage)
    settings.target_cycles = cycle_budget(o, board, base_cycles)

    out = Path(out)
    with atomic_output_dir(out, force=force, allow_existing=True) as tmp:
        with Executor(data, workers=o.workers, ray_address=o.ray_address) as executor:
            ctx = Context(settings, data, oracle, executor)
            kept = run(start, ctx)
        previous = pareto.read(tmp)
        keep_others = pareto.others(previous, o.strategy)
        entries = [entry(o, "unpruned" if start_rate == 0 else "start", start_rate, start, Path(model_path).resolve(),
                         data, oracle, board, epochs=0)]
        written = []
        for rate, cand in kept:
            name = pareto.checkpoint_name(rate, o.strategy, keep_others)
            while name in written:  # two kept models a hair apart in rate
                name = name[:-3] + "_b.pt"
            e = entry(o, o.strategy, rate, cand, out.resolve() / name, data, oracle, board, cand.epochs)
            save_checkpoint(tmp / name, cand.model, ckpt["normalization"], ckpt["dataset"], metrics_of(e, ckpt),
                            pruning=pruning_record(o, model_path, settings, rate, cand))
            entries.append(e)
            written.append(name)
        for name in pareto.stale_files(previous, o.strategy, written):
            (tmp / name).unlink(missing_ok=True)
        finetune = {**pareto.finetune_of(tmp, keep_others), o.strategy: settings.recipe.as_record()}
        pareto.write(tmp, keep_others + entries, finetune)
    return PruneResult(out=str(out), strategy=o.strategy, board=board.name, cycles_source=oracle.source,
                       models=entries, stopped=ctx.stop_reason, seconds=round(time.time() - started, 1))


def cycle_budget(o, board, base_cycles):
    """The tightest of --target-cycles, --target-ratio x the start model's and --max-latency-us at the
    board's clock (cycles per step); None without any."""
    given = [o.target_cycles, o.target_ratio and o.target_ratio * base_cycles,
             o.max_latency_us and o.max_latency_us * board.clock_hz / 1e6]
    given = [g for g in given if g]
    return min(given) if given else None


def entry(o, strategy, rate, cand, path, data, oracle, board, epochs):
    model, lineage = cand.model, cand.lineage
    test = evaluate(model, data.x_test, data.y_test)
    report = cost_report(model, o.coeff_bits)
    val = cand.val[0] if cand.val else evaluate(model, data.x_val, data.y_val)["accuracy"]
    x_sel, y_sel = selection_set(data)
    return {
        "rate": round(rate, 4), "pruned_fraction": round(pruned_fraction(model, lineage), 4), "strategy": strategy,
        "path": str(path), "accuracy": test["accuracy"], "test_loss": test["loss"], "val_accuracy": val,
        "selection_accuracy": evaluate(model, x_sel, y_sel)["accuracy"], "selection_n": len(y_sel),
        "operators": operators_kept(model, lineage), "d_model": model.config["d_model"],
        "pruned": summary(model, lineage),
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


def pruning_record(o, model_path, s, rate, cand):
    return {"strategy": s.strategy, "rate": rate, "pruned_fraction": pruned_fraction(cand.model, cand.lineage),
            "granularity": list(s.granularity), "score": s.score if s.strategy == "guided" else None,
            "latency": o.latency, "board": o.board, "base_model": str(Path(model_path).resolve()),
            "lineage": cand.lineage.as_dict(), "history": cand.history, "summary": summary(cand.model, cand.lineage),
            "finetune": s.recipe.as_record()}
