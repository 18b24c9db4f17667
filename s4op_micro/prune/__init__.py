"""Operator pruning (S4oP and beyond): `prune(...)` in api.py.

operators   apply a pruning decision: rebuild a smaller model (bypass, removed, modes, blocks, width)
importance  H-infinity (LAST-style) and Taylor scores of operators and modes
latency     the latency oracles (analytic, lut:FILE, emulator, board) and the LUT format
controller  the strategies: s4op (published baseline) and guided (importance + latency, NetAdapt-like)
finetune    the candidate tasks (fine-tune, damage) that run in workers
parallel    in-process, local process pool, or Ray
pareto      DIR/pareto.json and DIR/pareto.png
api         prune(...) -> PruneResult: checks, runs the controller, writes the results

It measures nothing itself: the emulator and board oracles call the function they are handed.
"""
