"""fit's search space and its prices: the budget, what a model costs at each coefficient width (from
its shapes: quant.cost.cost_report and prune.latency.AnalyticOracle), and the grid of shapes."""

import numpy as np
import torch

from ..core.errors import UserError
from ..models import SequenceClassifier
from ..prune.latency import AnalyticOracle
from ..quant.cost import cost_report
from ..train import set_seed

COEFF_BITS = (8, 16)       # recurrence coefficient widths the export offers; fit deploys the better one
COST_KEYS = ("flash_bytes", "ram_bytes", "macs_per_step", "cycles_per_step", "latency_us", "params")
BUDGET_KEYS = ("flash_bytes", "ram_bytes", "macs_per_step", "cycles_per_step")


def budget_of(o, board):
    """The limits every deployed model must meet: flash/RAM bytes, MACs and cycles per step."""
    for name, v in (("max-latency-us", o.max_latency_us), ("max-flash", o.max_flash), ("max-ram", o.max_ram),
                    ("max-macs-per-step", o.max_macs_per_step)):
        if v is not None and not v > 0:
            raise UserError(f"--{name} must be positive, not {v}")
    return {"flash_bytes": min(board.flash_bytes, o.max_flash or board.flash_bytes),
            "ram_bytes": min(board.ram_bytes, o.max_ram or board.ram_bytes),
            "macs_per_step": o.max_macs_per_step,
            "cycles_per_step": None if o.max_latency_us is None else o.max_latency_us * 1e-6 * board.clock_hz}


def costs(model, board, coeff_bits=8):
    r = cost_report(model, coeff_bits)
    cycles = AnalyticOracle(board, coeff_bits).cycles(model, None)
    return {"flash_bytes": r["flash_bytes"], "ram_bytes": r["ram_bytes"], "macs_per_step": r["macs_per_step"],
            "cycles_per_step": round(cycles, 1), "latency_us": round(cycles / board.clock_hz * 1e6, 2),
            "params": sum(p.numel() for p in model.parameters())}


def over_budget(c, budget):
    """The budget items cost figures c exceed (empty: it fits)."""
    return [k for k in BUDGET_KEYS if budget.get(k) is not None and c[k] > budget[k]]


def make_model(data, shape, seed=0):
    set_seed(seed)
    return SequenceClassifier(data["n_channels"], data["n_classes"], d_model=shape["d_model"], d_state=shape["d_state"],
                              n_layers=shape["n_layers"])


def cheapest(priced):
    """Of one model's prices at several widths: the one over the fewest budget items, then fewer cycles, less flash."""
    return min(priced, key=lambda c: (len(c["over"]), c["cycles_per_step"], c["flash_bytes"]))


def price_grid(o, data, budget, board):
    """Every shape of the grid, priced at its cheapest coefficient width (a shape is feasible if any width fits)."""
    grid = []
    with torch.no_grad():
        for H in sorted(set(o.d_models)):
            for N in sorted(set(o.d_states)):
                for n in sorted(set(o.n_layers)):
                    shape = {"d_model": H, "d_state": N, "n_layers": n}
                    model = make_model(data, shape)
                    priced = [{**c, "coeff_bits": bits, "over": over_budget(c, budget)}
                              for bits in COEFF_BITS for c in [costs(model, board, bits)]]
                    grid.append({**shape, **cheapest(priced)})
    return grid


def largest(feasible, k):
    """The feasible shapes no other feasible shape dominates in (H, N, layers); at most k, spread over the width."""
    keys = ("d_model", "d_state", "n_layers")
    top = [p for p in feasible if not any(q is not p and all(q[a] >= p[a] for a in keys) for q in feasible)]
    top.sort(key=lambda p: tuple(p[a] for a in keys))
    if len(top) > k:
        top = [top[i] for i in sorted({round(x) for x in np.linspace(0, len(top) - 1, k)})]
    return top
