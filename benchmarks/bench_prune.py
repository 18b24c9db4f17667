"""Pruning benchmark: the published S4oP algorithm against the guided controller, rate by rate.

    python benchmarks/bench_prune.py [--quick] [--datasets gunpoint,arrowhead,basicmotions,digits]

Per dataset: train the default model (`s4op-micro train`, seed 0), then prune it at the published
rates 10/30/50/70/90% with `s4op` and with `guided`, all through `s4op-micro prune`:

  s4op          the published algorithm with the published fine-tune (random operators, one candidate
                per published seed 7/42/123/2024/31650, epochs and patience of the reference's table
                for the dataset: prune/recipe.py); --seeds/--finetune-epochs/--quick override it
  guided        ours (its own fine-tune, --seeds x --finetune-epochs epochs per rate at most): operators,
                single modes and whole residual channels (a narrower d_model), Taylor scores, the step
                with the least loss per cycle saved (NetAdapt-like), kept models measured in QEMU
  guided-to-2x  the pipeline's guided stage: its milestones (10/30/50/70%), then on in segments of 10% of the cycles until
                the measured cycles per step are halved (--target-ratio 0.49); its "2x point" is the cheapest
                kept model within 1 point of the unpruned accuracy on validation + training sequences
                (pipeline.cheapest_within, the main job's rule)

Writes benchmarks/results/prune.json, prune.md (the table) and prune.png (accuracy vs cycles per
timestep). Cycles come from --latency (default emulator: every kept model's firmware measured in
QEMU; candidates ranked by the analytic estimate scaled to the latest measurement). --quick: fewer
seeds and epochs (s4op included), digits capped at 400 training sequences; --max-train-digits N caps
digits alone (the published s4op recipe otherwise untouched).
"""

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s4op_micro.cli import main  # noqa: E402
from s4op_micro.pipeline import PipelineOptions, cheapest_within  # noqa: E402
from s4op_micro.prune.recipe import PUBLISHED_RATES  # noqa: E402

RATES = PUBLISHED_RATES
VARIANTS = {
    "s4op": ["--strategy", "s4op"],
    "guided": ["--strategy", "guided", "--granularity", "operator,mode,width", "--score", "taylor"],
}
GUIDED = ("guided",)
# the pipeline's guided stage (pipeline.GUIDED): on until the measured cycles per step are halved
TO_2X = ["--strategy", "guided", "--granularity", "operator,mode,width", "--score", "taylor", "--target-ratio", "0.49"]
TO_2X_RATES = PipelineOptions().guided_rates
MAX_DROP = 1.0  # points of selection-set accuracy (pipeline.cheapest_within)
STYLE = {"s4op": dict(marker="o", color="tab:blue"), "guided": dict(marker="s", color="tab:red"),
         "guided-to-2x": dict(marker="D", color="tab:green", linestyle=":")}


def cli(*argv):
    argv = [str(a) for a in argv]
    print("$ s4op-micro " + " ".join(argv), file=sys.stderr, flush=True)
    if main(argv) != 0:
        raise SystemExit(f"s4op-micro {argv[0]} failed")


def collect_dataset(work):
    """A dataset's results from the pareto.json files an earlier (possibly interrupted) run left in
    WORK/<dataset>/<variant>; None unless every variant finished."""
    models, finetune = {}, {}
    for variant in (*VARIANTS, "guided-to-2x"):
        path = work / variant / "pareto.json"
        if not path.is_file():
            return None
        saved = json.loads(path.read_text())
        models["unpruned"] = [e for e in saved["models"] if e["strategy"] == "unpruned"]
        models[variant] = [e for e in saved["models"] if e["strategy"] != "unpruned"]
        finetune[variant] = next(iter(saved["finetune"].values()))
    return {"models": models, "seconds": {}, "finetune": finetune}


def run_dataset(name, args, work):
    cap = 400 if args.quick else args.max_train_digits
    data = ["--dataset", name] + (["--max-train", cap] if cap and name == "digits" else [])
    start = time.time()
    cli("train", *data, "--out", work / "base", "--force", "--seed", "0", "--quiet")
    seconds = {"train": round(time.time() - start, 1)}
    common = ["--rates", ",".join(map(str, RATES)), "--board", args.board, "--latency", args.latency,
              "--workers", args.workers, "--quiet"]
    guided_budget = ["--seeds", args.seeds, "--finetune-epochs", args.finetune_epochs, "--seed", "0"]
    s4op_overrides = [a for flag, value in (("--seeds", args.s4op_seeds), ("--finetune-epochs", args.s4op_epochs))
                      if value is not None for a in (flag, value)]
    models, finetune = {}, {}
    for variant, strategy in {**VARIANTS, "guided-to-2x": TO_2X}.items():
        start = time.time()
        out = work / variant
        budget = s4op_overrides if variant == "s4op" else guided_budget
        rates = common if variant != "guided-to-2x" else ["--rates", TO_2X_RATES, *common[2:]]
        cli("prune", work / "base" / "model.pt", *data, "--out", out, "--force", *strategy, *rates, *budget)
        saved = json.loads((out / "pareto.json").read_text())
        models["unpruned"] = [e for e in saved["models"] if e["strategy"] == "unpruned"]
        models[variant] = [e for e in saved["models"] if e["strategy"] != "unpruned"]
        finetune[variant] = next(iter(saved["finetune"].values()))
        seconds[variant] = round(time.time() - start, 1)
    return {"models": models, "seconds": seconds, "finetune": finetune}


def summarize(results):
    """Per dataset: guided vs s4op at each rate (accuracy and cycles), and the 2x point."""
    checks = {}
    for name, r in results.items():
        base = r["models"]["unpruned"][0]
        at = {v: {e["rate"]: e for e in r["models"][v]} for v in VARIANTS}
        checks[name] = {}
        for variant in GUIDED:
            both = [rate for rate in RATES if rate in at[variant] and rate in at["s4op"]]
            g, o = at[variant], at["s4op"]
            checks[name][variant] = {
                "beats_s4op_on_both_at": [x for x in both if g[x]["accuracy"] >= o[x]["accuracy"]
                                          and g[x]["cycles_per_step"] < o[x]["cycles_per_step"]],
                "not_at": {f"{x:.0%}": ", ".join(w for w, bad in (
                    ("lower accuracy", g[x]["accuracy"] < o[x]["accuracy"]),
                    ("more cycles", g[x]["cycles_per_step"] >= o[x]["cycles_per_step"])) if bad)
                    for x in both if not (g[x]["accuracy"] >= o[x]["accuracy"]
                                          and g[x]["cycles_per_step"] < o[x]["cycles_per_step"])},
                "missing_rates": [x for x in RATES if x not in g],
            }
        kept = r["models"]["guided-to-2x"]
        pick = cheapest_within([base, *kept], MAX_DROP)
        fastest = min(kept, key=lambda e: e["cycles_per_step"]) if kept else None

        def point(e):
            return None if e is None else {
                "rate": e["pruned_fraction"], "d_model": e.get("d_model"), "accuracy": e["accuracy"],
                "val_accuracy": e["val_accuracy"], "selection_accuracy": e.get("selection_accuracy"), "drop_points": round(100 * (base["accuracy"] - e["accuracy"]), 2),
                "cycles_per_step": e["cycles_per_step"], "speedup": round(base["cycles_per_step"] / e["cycles_per_step"], 2)}
        checks[name]["guided-to-2x"] = {"chosen": point(pick), "fastest": point(fastest)}
    return checks


def markdown(results, checks, config):
    lines = [f"# Pruning: S4oP vs guided ({config['mode']})", "",
             "s4op: the published algorithm and fine-tune (per dataset below; prune/recipe.py). guided variants: their "
             f"own fine-tune, {config['seeds']} x {config['finetune_epochs']} epochs per rate at most. Test accuracy (%) "
             f"and cycles per timestep ({config['cycles_source']}, {config['board']}). Rate = fraction of the SSM state "
             "pruned (= of operators for s4op; guided also cuts whole residual channels: its d_model is given with its cycles).",
             f"config: {config.get('note', '')}", ""]
    for name, r in results.items():
        base = r["models"]["unpruned"][0]
        at = {v: {e["rate"]: e for e in r["models"][v]} for v in VARIANTS}
        lines += [f"## {name}: unpruned {100 * base['accuracy']:.1f}%, {base['cycles_per_step']:.0f} cycles/step", "",
                  "| rate | " + " | ".join(f"{v} acc" for v in VARIANTS) + " | " + " | ".join(f"{v} cycles (x fewer)" for v in VARIANTS) + " |",
                  "|---" * (1 + 2 * len(VARIANTS)) + "|"]
        for rate in RATES:
            accs = [f"{100 * at[v][rate]['accuracy']:.1f}" if rate in at[v] else "-" for v in VARIANTS]
            cyc = [f"{at[v][rate]['cycles_per_step']:.0f} ({base['cycles_per_step'] / at[v][rate]['cycles_per_step']:.2f}x"
                   + (f", d_model {at[v][rate].get('d_model')}" if v != "s4op" else "") + ")"
                   if rate in at[v] else "-" for v in VARIANTS]
            lines.append(f"| {rate:.0%} | " + " | ".join(accs) + " | " + " | ".join(cyc) + " |")
        lines += ["", "time (s): " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items())]
        if "finetune" in r:
            ft = r["finetune"]["s4op"]
            spent = ", ".join(f"{e['rate']:.0%} {e['finetune_epochs']}" for e in r["models"]["s4op"])
            lines += ["", f"s4op fine-tune: {ft['source']}; {len(ft['seeds'])} seeds x {ft['epochs']} epochs, patience "
                      f"{ft['patience']}, lr {ft['lr']:g}, warm-up {ft['warmup_epochs']}"
                      + (f"; overridden: {' '.join(ft['overrides'])}" if ft["overrides"] else "")
                      + f". Epochs run per rate (all candidates): {spent}"]
        lines += [""]
    lines += ["## guided vs s4op, rate by rate", "",
              "| dataset | guided beats s4op on accuracy (>=) and cycles (<) at | where it does not |", "|---|---|---|"]
    for name, per in checks.items():
        c = per["guided"]
        lines.append(f"| {name} | {', '.join(f'{x:.0%}' for x in c['beats_s4op_on_both_at']) or '-'} | "
                     + ("; ".join(f"{k}: {v}" for k, v in c["not_at"].items()) or "-")
                     + (f"; no guided model at {', '.join(f'{x:.0%}' for x in c['missing_rates'])}" if c["missing_rates"] else "")
                     + " |")
    lines += ["", f"## The 2x point (guided-to-2x = the pipeline's guided stage: rates {TO_2X_RATES}, then to half the "
              "measured cycles)", "",
              f"chosen: the cheapest kept model within {MAX_DROP:g} point of the unpruned accuracy on the selection set "
              "(validation + training sequences; pipeline.cheapest_within); fastest: the last model kept.", "",
              "| dataset | unpruned acc | chosen: d_model | state pruned | test acc | drop (points) | cycles | x fewer "
              "| fastest: test acc | drop | x fewer |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per in checks.items():
        base = results[name]["models"]["unpruned"][0]
        c, f = per["guided-to-2x"]["chosen"], per["guided-to-2x"]["fastest"]
        left = (f"{c['d_model']} | {c['rate']:.1%} | {100 * c['accuracy']:.1f} | {c['drop_points']} | "
                f"{c['cycles_per_step']:.0f} | {c['speedup']}x") if c else "none within budget | - | - | - | - | -"
        right = f"{100 * f['accuracy']:.1f} | {f['drop_points']} | {f['speedup']}x" if f else "- | - | -"
        lines.append(f"| {name} | {100 * base['accuracy']:.1f} | {left} | {right} |")
    return "\n".join(lines) + "\n"


def plot(results, path, config):
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.8), squeeze=False)
    for ax, (name, r) in zip(axes[0], results.items()):
        base = r["models"]["unpruned"][0]
        ax.plot([base["cycles_per_step"]], [100 * base["accuracy"]], "k*", markersize=12, label="unpruned")
        for variant in (*VARIANTS, "guided-to-2x"):
            pts = sorted((e["cycles_per_step"], 100 * e["accuracy"]) for e in r["models"].get(variant, []))
            if pts:
                ax.plot(*zip(*pts), label=variant, **STYLE[variant])
        ax.set_title(name)
        ax.set_xlabel(f"cycles/step ({config['cycles_source'].split(' (')[0]})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced budget (2 seeds x 2 epochs; digits 400 sequences)")
    p.add_argument("--datasets", default="gunpoint,arrowhead,basicmotions,digits")
    p.add_argument("--max-train-digits", type=int, help="cap digits' training sequences (time on 2 cores)")
    p.add_argument("--seeds", type=int, help="guided budget (default 5); given, also s4op's candidates (default: published)")
    p.add_argument("--finetune-epochs", type=int, help="guided budget (default 5); given, also s4op's (default: published)")
    p.add_argument("--board", default="cortex-m7")
    p.add_argument("--latency", default="emulator", help="cycle oracle of `prune` (emulator: QEMU-measured kept models)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_prune"), help="where models go")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--render-only", action="store_true",
                   help="rewrite prune.md and prune.png from prune.json (its summary recomputed)")
    p.add_argument("--collect", action="store_true", help="no runs: gather the datasets an earlier run finished in --work")
    args = p.parse_args(argv)
    # s4op: the published recipe unless overridden (--quick overrides it too)
    args.s4op_seeds = args.seeds or (2 if args.quick else None)
    args.s4op_epochs = args.finetune_epochs or (2 if args.quick else None)
    args.seeds = args.seeds or (2 if args.quick else 5)
    args.finetune_epochs = args.finetune_epochs or (2 if args.quick else 5)
    return args


def render(out):
    """prune.md and prune.png from prune.json, its summary recomputed with this code's choice rule."""
    saved = json.loads((out / "prune.json").read_text())
    saved["targets"] = summarize(saved["datasets"])
    (out / "prune.json").write_text(json.dumps(saved, indent=1))
    (out / "prune.md").write_text(markdown(saved["datasets"], saved["targets"], saved["config"]))
    plot(saved["datasets"], out / "prune.png", saved["config"])


def main_bench(argv=None):
    args = parse_args(argv)
    if args.render_only:
        return render(Path(args.results))
    started = time.time()
    if args.collect:
        found = {name: collect_dataset(Path(args.work) / name) for name in args.datasets.split(",")}
        results = {k: v for k, v in found.items() if v is not None}
        args.collected = [k for k in found if found[k] is not None]
    else:
        results = {name: run_dataset(name, args, Path(args.work) / name) for name in args.datasets.split(",")}
    any_entry = next(iter(results.values()))["models"]["unpruned"][0]
    config = {"mode": "quick" if args.quick else "full", "seeds": args.seeds, "finetune_epochs": args.finetune_epochs,
              "rates": list(RATES), "board": args.board, "cycles_source": any_entry["cycles_source"],
              "variants": {k: " ".join(v) for k, v in {**VARIANTS, "guided-to-2x": TO_2X}.items()},
              "seconds": round(time.time() - started, 1),
              "note": ("quick" if args.quick else "s4op: published recipe")
              + (f"; collected from finished runs: {', '.join(args.collected)}" if args.collect else "") + (f"; digits: {args.max_train_digits} training "
                                                                              "sequences" if args.max_train_digits else "")}
    checks = summarize(results)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prune.json").write_text(json.dumps({"config": config, "targets": checks, "datasets": results}, indent=1) + "\n")
    render(out)
    print((out / "prune.md").read_text())
    print(f"total {config['seconds']:.0f} s -> {out / 'prune.md'}", file=sys.stderr)


if __name__ == "__main__":
    main_bench()
