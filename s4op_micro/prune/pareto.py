"""DIR/pareto.json and DIR/pareto.png: one entry per kept model, merged across strategies.

pareto.json is {"models": [...], "finetune": {strategy: recipe}}; "finetune" holds, per strategy in the
file, how its fine-tunes trained (recipe.FinetuneRecipe.as_record: lr, ssm_lr, weight_decay,
ssm_weight_decay, warmup_epochs, schedule, grad_clip, patience, epochs, batch_size, augment, bn_stats
("carried" or "re-estimated"), early_stopping, tie_break, seeds, source, and the overrides: flags that
replaced a default). Each model entry has rate (nominal fraction of operators pruned),
pruned_fraction (actual, over state modes), strategy ("s4op", "guided", or "unpruned" / "start" for
the model pruning started from), path (absolute), accuracy (test, fraction), val_accuracy,
selection_accuracy and selection_n (validation + training sequences: finetune.selection_set), operators (active
per original layer, 0 for a dropped block), pruned (per original layer: bypassed, removed,
modes_pruned, block_removed), params, flash_bytes, ram_bytes, cycles_per_step, cycles_source,
finetune_epochs, board. Running the other strategy into the same DIR keeps this one's entries.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"s4op": dict(marker="o", color="tab:blue"), "guided": dict(marker="s", color="tab:red"),
         "unpruned": dict(marker="*", color="black", markersize=14, linestyle="none")}


def load(directory):
    path = Path(directory) / "pareto.json"
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        saved = {}
    return saved if isinstance(saved, dict) else {}  # not ours or damaged: this run's entries replace it


def read(directory):
    models = load(directory).get("models", [])
    return list(models) if isinstance(models, list) else []


def finetune_of(directory, kept):
    """The recorded recipes of the strategies whose entries are `kept`."""
    recipes = load(directory).get("finetune", {})
    strategies = {e.get("strategy") for e in kept}
    return {k: v for k, v in recipes.items() if k in strategies} if isinstance(recipes, dict) else {}


def checkpoint_name(rate, strategy, others):
    """pruned_<pct>.pt; with the other strategy's pruned_<pct>.pt already in DIR, pruned_<pct>_<strategy>.pt.
    (<pct> keeps a decimal where the rate is not a whole percentage, e.g. where a cycle target stopped.)"""
    pct = f"{round(100 * rate, 2):g}"
    name = f"pruned_{pct}.pt"
    taken = {Path(e["path"]).name for e in others}
    return name if name not in taken else f"pruned_{pct}_{strategy}.pt"


def others(entries, strategy):
    """Entries of the other strategy (the starting model's entry is rewritten by every run)."""
    return [e for e in entries if e.get("strategy") not in (strategy, "unpruned", "start")]


def stale_files(entries, strategy, written):
    """Checkpoints of an earlier run of this strategy that this run did not rewrite."""
    return {Path(e["path"]).name for e in entries if e.get("strategy") == strategy} - set(written)


def write(directory, entries, finetune=None):
    directory = Path(directory)
    entries = sorted(entries, key=lambda e: (e["strategy"] != "unpruned", e["strategy"], e["rate"]))
    (directory / "pareto.json").write_text(json.dumps({"models": entries, "finetune": finetune or {}}, indent=1) + "\n")
    plot(entries, directory / "pareto.png")


def mark_chosen(directory, chosen_path, note="deployed"):
    """Redraw DIR/pareto.png with the model at `chosen_path` circled (the pipeline's deployed one)."""
    directory = Path(directory)
    plot(read(directory), directory / "pareto.png", chosen=str(chosen_path), note=note)


def plot(entries, path, chosen=None, note="deployed"):
    sources = sorted({e["cycles_source"] for e in entries})
    estimate = any("estimate" in src and "emulator" not in src for src in sources)
    cycles_label = "; ".join(sorted({f"{e['cycles_source']}, {e['board']}" for e in entries}))
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for strategy in sorted({e["strategy"] for e in entries}, key=lambda s: s != "unpruned"):
        points = sorted((e["cycles_per_step"], 100 * e["accuracy"], e["rate"]) for e in entries if e["strategy"] == strategy)
        xs, ys, rates = zip(*points)
        ax.plot(xs, ys, label=strategy, **STYLE.get(strategy, dict(marker="^")))
        if strategy != "unpruned":
            for x, y, r in points:
                ax.annotate(f"{r:.0%}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for e in entries:
        if chosen is not None and e["path"] == chosen:
            ax.plot([e["cycles_per_step"]], [100 * e["accuracy"]], "o", markersize=16, markerfacecolor="none",
                    markeredgecolor="tab:green", markeredgewidth=2, label=note)
    ax.set_xlabel(("estimated " if estimate else "") + f"cycles per timestep ({cycles_label})", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
