"""Operator pruning (S4oP and beyond): `s4op-micro prune`.

operators   apply a pruning decision: rebuild a smaller model (bypass, removed, modes, blocks)
importance  H-infinity (LAST-style) and Taylor scores of operators and modes
latency     the latency oracles (analytic, lut:FILE, emulator, board) and the LUT format
controller  the strategies: s4op (published baseline) and guided (importance + latency, NetAdapt-like)
finetune    the candidate tasks (fine-tune, damage) that run in workers
parallel    in-process, local process pool, or Ray
pareto      DIR/pareto.json and DIR/pareto.png
command     the command line
"""


def register(sub):
    from .command import register as register_prune

    register_prune(sub)
