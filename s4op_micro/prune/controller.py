"""The two pruning strategies; both yield one kept model per rate.

s4op (the published algorithm, PARCO-LAB/S4oP `s4op.py`, as the baseline): at each rate, one
candidate per seed bypasses random extra operators among those still active (Python's
random.Random(seed).sample per layer, as the reference's random.seed + random.sample), so many per
layer that the rate's budget is spread over layers in proportion to 2^i (`exponential_budget`: layer
0 only once the deeper layers are saturated; at least one operator per layer survives); each
candidate is fine-tuned with S4oP's published recipe (recipe.FinetuneRecipe.published_s4op); the
one with the strictly best validation accuracy (ties: the first seed) is kept and seeds the next
rate. Deviations from the published code, both only where it misbehaves: a one-layer model is
pruned (the published loop never starts), and a remainder that rounding cannot place goes to the
deepest unsaturated layer (no endless loop).

guided (ours): NetAdapt-like. From rate to rate it takes small steps (at most STEP of the state
each); at every step each layer proposes, for each allowed granularity, to drop its least important
units (`importance.score`: --score hinf|taylor) or the whole block; each proposal's damage is
measured (loss on validation + training sequences after re-estimating BatchNorm statistics), its
cycles saved come from the latency oracle, and the proposal with the least loss increase per cycle
saved wins; a one-epoch fine-tune follows it. At each rate the model is fine-tuned with what is left
of the budget: len(seeds) x epochs of its own recipe (recipe.FinetuneRecipe.guided), the most an s4op
run with that recipe would spend. Stops when validation accuracy falls more than --max-drop points below the
unpruned model (that model is not kept), or once the cycle target is met (past the last rate if
need be).
"""

import math
import random
import sys
from dataclasses import dataclass, field, replace

import numpy as np

from ..train import evaluate
from . import importance
from .finetune import damage_task, finetune_task, pack, unpack
from .operators import Decision, apply, pruned_fraction

DEFAULT_RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
GRANULARITIES = ("operator", "mode", "removed", "block")
STRATEGIES = ("s4op", "guided")
STEP = 0.05  # guided: at most this fraction of the original state goes per step
MAX_STEPS = 200  # guided: per rate (every step prunes at least one unit; this is a safety net)


@dataclass
class Settings:
    recipe: object  # recipe.FinetuneRecipe: how the fine-tunes train, their seeds and budget
    strategy: str = "guided"
    rates: tuple = DEFAULT_RATES
    score: str = "taylor"
    granularity: tuple = ("operator",)
    max_drop: float = None  # accuracy points
    target_cycles: float = None
    device: str = "cpu"
    qat: bool = False
    coeff_bits: int = 8  # of the exported recurrence coefficients: QAT and the cost report
    bars: bool = True  # a tqdm bar per fine-tune (in-process runs only)
    log: object = field(default=lambda msg: print(msg, file=sys.stderr))

    @property
    def budget(self):
        """Fine-tune epochs per rate: what s4op spends on its candidates at most."""
        return len(self.recipe.seeds) * self.recipe.epochs


@dataclass
class Candidate:
    """A model, its lineage to the original, and the record of what went so far."""

    model: object
    lineage: object
    history: list
    val: tuple = None  # (accuracy, loss) after its last fine-tune
    epochs: int = 0  # fine-tune epochs spent on reaching this rate (all candidates)

    @property
    def rate(self):
        return pruned_fraction(self.model, self.lineage)

    def then(self, decision, strategy, rate):
        step = {"strategy": strategy, "rate": rate, **decision.describe(self.lineage)}
        return Candidate(apply(self.model, decision), self.lineage.after(decision), [*self.history, step])


class Context:
    def __init__(self, settings, data, oracle, executor):
        self.s, self.data, self.oracle, self.executor = settings, data, oracle, executor
        self.stop_reason = None

    def finetune(self, candidates, epochs, patience, label, seeds):
        """Fine-tune candidates in parallel; each gets its model back and its validation score.
        Returns the epochs run, in total."""
        s, n = self.s, len(candidates)
        bars = s.bars and self.executor.in_process  # bars of parallel workers would garble
        recipe = replace(s.recipe, epochs=epochs, patience=patience)
        tasks = [dict(model=pack(c.model), recipe=recipe, seed=seed, progress=bars, desc=f"{label} {i + 1}/{n}",
                      device=s.device, qat=s.qat, coeff_bits=s.coeff_bits)
                 for i, (c, seed) in enumerate(zip(candidates, seeds))]

        def report(i, result):
            h = result["history"]
            s.log(f"{label} {i + 1}/{n}: val accuracy {h['val_accuracy']:.3f}, loss {h['val_loss']:.4f} "
                  f"({h['epochs_run']} epochs, {h['seconds']:.1f} s)")

        total = 0
        for c, result in zip(candidates, self.executor.map(finetune_task, tasks, on_result=report)):
            h = result["history"]
            c.model, c.val = unpack(result["model"]), (h["val_accuracy"], h["val_loss"])
            total += h["epochs_run"]
        return total

    def damage(self, models):
        tasks = [dict(model=pack(m), device=self.s.device) for m in models]
        return self.executor.map(damage_task, tasks)

    def validation(self, model):
        res = evaluate(model, self.data.x_val, self.data.y_val)
        return res["accuracy"], res["loss"]


def run(start, ctx):
    """Kept models, as (nominal rate, Candidate), in rate order; ctx.stop_reason says why it ended."""
    return list((run_s4op if ctx.s.strategy == "s4op" else run_guided)(start, ctx))


# --- s4op ---------------------------------------------------------------------------------------

def exponential_budget(rate, n_layers, H):
    """Operators pruned per layer at `rate`, as S4oP's get_pruning_idx_exponential."""
    target = int(round(rate * H * n_layers))
    pruned = [0] * n_layers
    remaining, layers = target, list(range(1, n_layers)) or [0]
    while layers and remaining > 0:
        weights = [2**i for i in layers]
        still = []
        for i, w in zip(layers, weights):
            alloc = int(round(w / sum(weights) * remaining))
            if pruned[i] + alloc >= H - 1:
                pruned[i] = H - 1
            else:
                pruned[i] += alloc
                still.append(i)
        if remaining == target - sum(pruned) and still:  # rounding placed nothing
            pruned[still[-1]] += 1
        remaining, layers = target - sum(pruned), still
        if not layers and pruned[0] < H - 1 and remaining > 0:
            layers = [0]
    return pruned


def run_s4op(start, ctx):
    s, current, seeds = ctx.s, start, ctx.s.recipe.seeds
    for rate in s.rates:
        budget = exponential_budget(rate, start.lineage.n_layers, start.lineage.d_model)
        candidates = [current.then(random_bypass(current, budget, seed), "s4op", rate) for seed in seeds]
        label = f"s4op {rate:.0%}"
        epochs = ctx.finetune(candidates, s.recipe.epochs, s.recipe.patience, label, seeds)
        best = s.recipe.best_candidate([c.val for c in candidates])
        current = candidates[best]
        current.history[-1].update(candidate=best, seed=seeds[best])
        current.epochs = epochs
        s.log(f"{label}: kept candidate {best + 1} (seed {seeds[best]}, val accuracy {current.val[0]:.3f}), "
              f"{current.rate:.1%} pruned")
        yield rate, current


def random_bypass(current, budget, seed):
    """Bypass random extra operators so that each original layer has `budget` pruned, drawn as the
    reference does: random.seed(seed), then random.sample of each layer's active operators in turn."""
    rng, H, bypass = random.Random(seed), current.lineage.d_model, {}
    for j, layer in enumerate(current.model.layers):
        active = layer.active.tolist()
        extra = min(max(0, budget[current.lineage.layers[j]] - (H - len(active))), len(active) - 1)
        if extra > 0:
            bypass[j] = sorted(rng.sample(active, extra))
    return Decision(bypass=bypass)


# --- guided -------------------------------------------------------------------------------------

def run_guided(start, ctx):
    s, current, seed = ctx.s, start, ctx.s.recipe.seeds[0]
    base_accuracy, _ = ctx.validation(start.model)

    def cycles_met(c):  # the estimate first; a measuring oracle then confirms (and refreshes its scale)
        return (s.target_cycles is not None and ctx.oracle.estimate(c.model, c.lineage) <= s.target_cycles
                and ctx.oracle.cycles(c.model, c.lineage) <= s.target_cycles)

    # a cycle target not met at the last rate: go on pruning (blocks included) until it is met
    schedule = [*s.rates, *([1.0] if s.target_cycles is not None else [])]
    for m, rate in enumerate(schedule):
        label = f"guided {rate:.0%}" if rate < 1 else "guided (to the cycle target)"
        used = step = 0
        while current.rate < rate - 1e-9 and not cycles_met(current) and step < MAX_STEPS:
            remaining = rate - current.rate
            chosen = best_proposal(current, remaining / math.ceil(remaining / STEP - 1e-9), rate, ctx, label)
            if chosen is None:
                ctx.stop_reason = "nothing left to prune"
                break
            current, step = chosen, step + 1
            if used + s.recipe.epochs < s.budget:  # a short fine-tune, if the budget allows
                used += ctx.finetune([current], 1, None, f"{label} step {step}", [seed + 1000 * m + step])
        used += ctx.finetune([current], max(1, s.budget - used), s.recipe.patience, f"{label} fine-tune",
                             [seed + 1000 * m + 999])
        current.epochs = used
        drop = 100 * (base_accuracy - current.val[0])
        if s.max_drop is not None and drop > s.max_drop:
            ctx.stop_reason = (f"validation accuracy {current.val[0]:.3f} at {current.rate:.1%} pruned is {drop:.1f} points "
                               f"below the unpruned model's {base_accuracy:.3f} (--max-drop {s.max_drop:g}); not kept")
            return
        met = cycles_met(current)
        yield (rate if current.rate >= rate - 1e-9 else round(current.rate, 3)), current
        if met:
            ctx.stop_reason = f"cycle target {s.target_cycles:.0f} per step reached"
            return
        if ctx.stop_reason:
            return
    if s.target_cycles is not None:
        ctx.stop_reason = f"cycle target {s.target_cycles:.0f} per step not reached by the last rate"


def best_proposal(current, fraction, rate, ctx, label):
    """The proposal with the least loss increase per cycle saved (a loss decrease: most cycles)."""
    proposals = propose(current, fraction, rate, ctx)
    if not proposals:
        return None
    damages = ctx.damage([current.model] + [c.model for _, _, c in proposals])
    cycles_now = ctx.oracle.estimate(current.model, current.lineage)

    def key(i):
        dloss = damages[i + 1]["loss"] - damages[0]["loss"]
        saved = max(cycles_now - ctx.oracle.estimate(proposals[i][2].model, proposals[i][2].lineage), 1e-9)
        return (dloss > 0, dloss / saved if dloss > 0 else -saved)

    best = min(range(len(proposals)), key=key)
    kind, layer, chosen = proposals[best]
    dloss = damages[best + 1]["loss"] - damages[0]["loss"]
    saved = cycles_now - ctx.oracle.estimate(chosen.model, chosen.lineage)
    ctx.s.log(f"{label}: {kind} step in layer {current.lineage.layers[layer]} (loss {dloss:+.4f}, "
              f"{saved:.0f} cycles saved; best of {len(proposals)} proposals) -> {chosen.rate:.1%} pruned")
    return chosen


def propose(current, fraction, rate, ctx):
    """Per layer and granularity: (kind, layer, candidate) taking about `fraction` of the state."""
    s, model, lineage = ctx.s, current.model, current.lineage
    M = lineage.modes_per_operator
    units = fraction * lineage.n_layers * lineage.d_model * M  # modes to prune
    x, y = ctx.data.x_train, ctx.data.y_train
    needs = {"operator": "bypass", "removed": "zero", "mode": "mode"}
    by_kind = importance.score(model, s.score, [needs[k] for k in s.granularity if k in needs], x, y)
    scores = {k: by_kind[needs[k]] for k in s.granularity if k in needs}
    proposals = []
    for j, layer in enumerate(model.layers):
        active = layer.active.tolist()
        for kind in s.granularity:
            decision = None
            if kind in ("operator", "removed"):
                k = min(math.ceil(units / M - 1e-9), len(active) - 1)  # one operator per layer survives
                if k >= 1:
                    order = np.argsort(scores[kind][j].numpy(), kind="stable")[:k]
                    chosen = sorted(active[i] for i in order)
                    decision = Decision(bypass={j: chosen}) if kind == "operator" else Decision(remove={j: chosen})
            elif kind == "mode":
                sc = scores[kind][j].clone()
                finite = ~sc.isinf()
                sc[range(len(active)), sc.masked_fill(~finite, -math.inf).argmax(-1)] = math.inf  # one mode per operator stays
                k = min(math.ceil(units - 1e-9), int((~sc.isinf()).sum()))
                if k >= 1:
                    flat = np.argsort(sc.flatten().numpy(), kind="stable")[:k]
                    decision = Decision(modes={j: [(active[f // M], int(f % M)) for f in flat]})
            elif kind == "block" and len(model.layers) > 1:
                decision = Decision(blocks=[j])
            if decision is None:
                continue
            candidate = current.then(decision, "guided", rate)
            if kind == "block" and candidate.rate > rate + fraction + 1e-9:
                continue  # far too coarse at this rate
            proposals.append((kind, j, candidate))
    return proposals
