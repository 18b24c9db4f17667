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
each); at every step it proposes, for each allowed granularity, to drop the least important units:
per layer its operators (bypassed, or removed with their mixer column), its modes or the whole block,
and model-wide whole channels of the residual stream (`width`: a narrower d_model, which shrinks
every mixer, norm, requantization and GELU/GLU pass, not only the recurrence); importance from
`importance.score` (--score hinf|taylor), channels from `importance.channel_scores` (Taylor). Each
proposal's damage is measured (loss on validation + training sequences after re-estimating
BatchNorm statistics), its cycles saved come from the latency oracle, and the proposal with the
least loss increase per cycle saved wins; a one-epoch fine-tune follows it. At each rate the model
is fine-tuned with what is left of the budget: len(seeds) x epochs of its own recipe
(recipe.FinetuneRecipe.guided, which distills from the unpruned model), the most an s4op run with
that recipe would spend. Stops when accuracy on the selection set (finetune.selection_set: validation
+ training sequences) falls more than --max-drop points (at least one sequence: finetune.within_drop)
below the unpruned model's (that model is not kept), or once every budget given is met (cycles per
step: --target-cycles, --target-ratio, --max-latency-us; bytes: --max-flash, --max-ram, from
quant.cost.cost_report), past the last rate if need be. Past the rates, inside a segment of cycles,
the steps land on the segment's goal instead of overshooting it (a cut the target did not ask for
costs accuracy for nothing): a proposal that would go below the goal takes only about as many units
as the cycles still to go need, the cycles past the goal earn it nothing, and one that would save
more than twice the cycles still to go ranks after every proposal that does not.
"""

import math
import random
import sys
from dataclasses import dataclass, field, replace

import numpy as np

from ..quant.cost import cost_report
from ..train import evaluate
from . import importance
from .finetune import damage_task, finetune_task, pack, selection_set, unpack, within_drop
from .operators import Decision, apply, pruned_fraction

DEFAULT_RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
GRANULARITIES = ("operator", "mode", "removed", "block", "width")
STRATEGIES = ("s4op", "guided")
STEP = 0.05  # guided: at most this fraction of the original state goes per step
MAX_STEPS = 200  # guided: per rate (every step prunes at least one unit; this is a safety net)
SEGMENT = 0.1  # guided past the last rate: a kept model per this fraction of the start model's cycles


@dataclass
class Settings:
    recipe: object  # recipe.FinetuneRecipe: how the fine-tunes train, their seeds and budget
    strategy: str = "guided"
    rates: tuple = DEFAULT_RATES
    score: str = "taylor"
    granularity: tuple = ("operator",)
    max_drop: float = None  # accuracy points
    target_cycles: float = None
    max_flash: int = None  # bytes (quant.cost.cost_report)
    max_ram: int = None
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
        self.teacher = None  # the packed start model, the soft targets of a distilling recipe

    def finetune(self, candidates, epochs, patience, label, seeds):
        """Fine-tune candidates in parallel; each gets its model back and its validation score.
        Returns the epochs run, in total."""
        s, n = self.s, len(candidates)
        bars = s.bars and self.executor.in_process  # bars of parallel workers would garble
        recipe = replace(s.recipe, epochs=epochs, patience=patience)
        tasks = [dict(model=pack(c.model), recipe=recipe, seed=seed, progress=bars, desc=f"{label} {i + 1}/{n}",
                      device=s.device, qat=s.qat, coeff_bits=s.coeff_bits, teacher=self.teacher)
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

    def selection(self, model):
        """Accuracy on the selection set (finetune.selection_set): what --max-drop is measured on."""
        return evaluate(model, *selection_set(self.data))["accuracy"]


def run(start, ctx):
    """Kept models, as (nominal rate, Candidate), in rate order; ctx.stop_reason says why it ended."""
    ctx.teacher = pack(start.model) if ctx.s.recipe.distill else None
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
    base_accuracy = ctx.selection(start.model)
    n_selection = len(selection_set(ctx.data)[1])

    budgets = s.target_cycles is not None or s.max_flash is not None or s.max_ram is not None

    def cycles_met(c):  # every budget given; cycles: the estimate first, a measuring oracle then confirms
        if not budgets:
            return False
        if s.max_flash is not None or s.max_ram is not None:
            report = cost_report(c.model, s.coeff_bits)
            if (s.max_flash is not None and report["flash_bytes"] > s.max_flash
                    or s.max_ram is not None and report["ram_bytes"] > s.max_ram):
                return False
        return s.target_cycles is None or (ctx.oracle.estimate(c.model, c.lineage) <= s.target_cycles
                                           and ctx.oracle.cycles(c.model, c.lineage) <= s.target_cycles)

    base_cycles = ctx.oracle.estimate(start.model, start.lineage)

    def milestones():
        """The rates, then (a budget not met at the last rate) segments of SEGMENT x the start
        model's cycles each, down to the cycle target (or on to 100% for a flash/RAM budget): every
        segment is fine-tuned and kept, so the accuracy-vs-cycles front stays fine-grained."""
        yield from ((r, None) for r in s.rates)
        while budgets and not cycles_met(current) and not ctx.stop_reason:
            if s.target_cycles is None:
                yield 1.0, None
                return
            now = ctx.oracle.estimate(current.model, current.lineage)
            yield 1.0, max(s.target_cycles, now - SEGMENT * base_cycles)

    for m, (rate, cycles) in enumerate(milestones()):
        label = (f"guided {rate:.0%}" if cycles is None and rate < 1 else
                 f"guided (to {cycles:.0f} cycles)" if cycles is not None else "guided (to the budget)")
        used = step = 0

        def more():
            if cycles_met(current) or step >= MAX_STEPS:
                return False
            if cycles is not None:
                return ctx.oracle.estimate(current.model, current.lineage) > cycles
            return current.rate < rate - 1e-9

        while more():
            remaining = rate - current.rate
            fraction = STEP if cycles is not None else remaining / math.ceil(remaining / STEP - 1e-9)
            chosen = best_proposal(current, fraction, rate, ctx, label, goal=cycles)
            if chosen is None:
                ctx.stop_reason = "nothing left to prune"
                break
            current, step = chosen, step + 1
            if used + s.recipe.epochs < s.budget:  # a short fine-tune, if the budget allows
                used += ctx.finetune([current], 1, None, f"{label} step {step}", [seed + 1000 * m + step])
        if step == 0 and m >= len(s.rates):
            break  # nothing to do past the rates
        used += ctx.finetune([current], max(1, s.budget - used), s.recipe.patience, f"{label} fine-tune",
                             [seed + 1000 * m + 999])
        current.epochs = used
        accuracy = ctx.selection(current.model)
        drop = 100 * (base_accuracy - accuracy)
        if s.max_drop is not None and not within_drop(base_accuracy, accuracy, s.max_drop, n_selection):
            ctx.stop_reason = (f"selection accuracy {accuracy:.3f} at {current.rate:.1%} pruned is {drop:.1f} points "
                               f"below the unpruned model's {base_accuracy:.3f} (--max-drop {s.max_drop:g}, at least "
                               f"one of {n_selection} sequences); not kept")
            return
        met = cycles_met(current)
        yield (rate if cycles is None and current.rate >= rate - 1e-9 else round(current.rate, 4)), current
        if met:
            ctx.stop_reason = f"{budget_text(s)} reached"
            return
        if ctx.stop_reason:
            return
    if budgets:
        ctx.stop_reason = f"{budget_text(s)} not reached by the last rate"


def budget_text(s):
    parts = ([f"cycle target {s.target_cycles:.0f} per step"] if s.target_cycles is not None else []) \
        + ([f"flash budget {s.max_flash} B"] if s.max_flash is not None else []) \
        + ([f"RAM budget {s.max_ram} B"] if s.max_ram is not None else [])
    return " and ".join(parts)


def best_proposal(current, fraction, rate, ctx, label, goal=None):
    """The proposal with the least loss increase per cycle saved (a loss decrease: most cycles).
    goal: the cycle segment's (None at a rate); only the cycles down to it count as saved, and a
    proposal saving more than twice those ranks last (see `propose` for how proposals are sized)."""
    proposals = propose(current, fraction, rate, ctx, goal)
    if not proposals:
        return None
    damages = ctx.damage([current.model] + [c.model for _, _, c in proposals])
    cycles_now = ctx.oracle.estimate(current.model, current.lineage)
    saved = [cycles_now - ctx.oracle.estimate(c.model, c.lineage) for _, _, c in proposals]
    to_go = math.inf if goal is None else cycles_now - goal

    def key(i):
        dloss = damages[i + 1]["loss"] - damages[0]["loss"]
        credit = max(min(saved[i], to_go), 1e-9)
        return (saved[i] > 2 * to_go, dloss > 0, dloss / credit if dloss > 0 else -credit, saved[i])

    best = min(range(len(proposals)), key=key)
    kind, layer, chosen = proposals[best]
    dloss = damages[best + 1]["loss"] - damages[0]["loss"]
    where = (f"d_model {current.model.config['d_model']} -> {chosen.model.config['d_model']}" if layer is None
             else f"layer {current.lineage.layers[layer]}")
    ctx.s.log(f"{label}: {kind} step, {where} (loss {dloss:+.4f}, "
              f"{saved[best]:.0f} cycles saved; best of {len(proposals)} proposals) -> {chosen.rate:.1%} pruned")
    return chosen


def width_decision(model, lineage, units, scores, limit=None):
    """Cut the least important residual channels: as many as carry about `units` modes, at most
    max(1, ceil(STEP x the original d_model)) (and `limit`) per step, never the last channel nor the
    last active operator of a layer."""
    H = model.config["d_model"]
    if H <= 1:
        return None
    cap = max(1, math.ceil(STEP * lineage.d_model - 1e-9))
    if limit is not None:
        cap = min(cap, limit)
    modes = [0] * H
    active_left = []
    for layer in model.layers:
        mask = getattr(layer.kernel, "mode_mask", None)
        per = (mask > 0).sum(-1).tolist() if mask is not None else [layer.n // 2] * len(layer.active)
        for c, k in zip(layer.active.tolist(), per):
            modes[c] += int(k)
        active_left.append(set(layer.active.tolist()))
    chosen, carried = [], 0
    for c in np.argsort(scores.numpy(), kind="stable").tolist():
        if len(chosen) >= min(cap, H - 1) or carried >= units:
            break
        if any(a == {c} for a in active_left):
            continue
        for a in active_left:
            a.discard(c)
        chosen.append(c)
        carried += modes[c]
    return Decision(channels=sorted(chosen)) if chosen else None


def propose(current, fraction, rate, ctx, goal=None):
    """Per layer and granularity: (kind, layer, candidate) taking about `fraction` of the state. With a
    cycle goal, a candidate that would go below it is rebuilt with fewer of its units: as many as the
    cycles still to go need, its saving taken as linear in its units."""
    s, model, lineage = ctx.s, current.model, current.lineage
    M = lineage.modes_per_operator
    units = fraction * lineage.n_layers * lineage.d_model * M  # modes to prune
    x, y = ctx.data.x_train, ctx.data.y_train
    needs = {"operator": "bypass", "removed": "zero", "mode": "mode"}
    kinds = [needs[k] for k in s.granularity if k in needs]
    by_kind = importance.score(model, s.score, kinds, x, y) if kinds else {}
    scores = {k: by_kind[needs[k]] for k in s.granularity if k in needs}
    cycles_now = ctx.oracle.estimate(model, lineage) if goal is not None else None

    def sized(decide, k):
        """The candidate of decide(k), the k least important units, or of fewer to land on the goal."""
        candidate = current.then(decide(k), "guided", rate)
        if goal is None or k <= 1:
            return candidate
        after = ctx.oracle.estimate(candidate.model, candidate.lineage)
        if after >= goal:
            return candidate
        fewer = max(1, math.ceil(k * (cycles_now - goal) / (cycles_now - after) - 1e-9))
        return current.then(decide(fewer), "guided", rate) if fewer < k else candidate

    proposals = []
    if "width" in s.granularity:
        channel_scores = importance.channel_scores(model, x, y)

        def cut(n=None):
            return width_decision(model, lineage, units, channel_scores, limit=n)
        decision = cut()
        if decision is not None:
            proposals.append(("width", None, sized(cut, len(decision.channels))))
    for j, layer in enumerate(model.layers):
        active = layer.active.tolist()
        for kind in s.granularity:
            if kind in ("operator", "removed"):
                k = min(math.ceil(units / M - 1e-9), len(active) - 1)  # one operator per layer survives
                if k < 1:
                    continue
                order = np.argsort(scores[kind][j].numpy(), kind="stable")

                def decide(n, order=order, kind=kind, j=j, active=active):
                    chosen = sorted(active[i] for i in order[:n])
                    return Decision(bypass={j: chosen}) if kind == "operator" else Decision(remove={j: chosen})
                proposals.append((kind, j, sized(decide, k)))
            elif kind == "mode":
                sc = scores[kind][j].clone()
                finite = ~sc.isinf()
                sc[range(len(active)), sc.masked_fill(~finite, -math.inf).argmax(-1)] = math.inf  # one mode per operator stays
                k = min(math.ceil(units - 1e-9), int((~sc.isinf()).sum()))
                if k < 1:
                    continue
                flat = np.argsort(sc.flatten().numpy(), kind="stable")

                def decide(n, flat=flat, j=j, active=active):
                    return Decision(modes={j: [(active[f // M], int(f % M)) for f in flat[:n]]})
                proposals.append((kind, j, sized(decide, k)))
            elif kind == "block" and len(model.layers) > 1:
                candidate = current.then(Decision(blocks=[j]), "guided", rate)
                if candidate.rate > rate + fraction + 1e-9:
                    continue  # far too coarse at this rate
                proposals.append((kind, j, candidate))
    return proposals
