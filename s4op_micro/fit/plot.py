"""fit.png: int8 cross-validation accuracy (the deployed width's) against cycles and flash, the Pareto front."""


def _acc(p):
    return p["int8_cv_accuracy"]


def mark_front(points):
    """pareto: no other point is at least as accurate (int8 CV) and at most as costly in cycles and flash,
    better in one."""
    for p in points:
        p["pareto"] = not any(
            q is not p and _acc(q) >= _acc(p) and q["cycles_per_step"] <= p["cycles_per_step"]
            and q["flash_bytes"] <= p["flash_bytes"] and (_acc(q), -q["cycles_per_step"], -q["flash_bytes"])
            != (_acc(p), -p["cycles_per_step"], -p["flash_bytes"]) for q in points)


def plot(points, chosen, firmware, budget, board, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label, limit in ((axes[0], "cycles_per_step", "cycles per step (analytic)", budget["cycles_per_step"]),
                                  (axes[1], "flash_bytes", "flash bytes (model, estimated)", budget["flash_bytes"])):
        for kind, marker in (("direct", "o"), ("pruned", "v")):
            ps = [p for p in points if p["kind"] == kind]
            ax.errorbar([p[key] for p in ps], [_acc(p) for p in ps], yerr=[p["int8_cv_std"] for p in ps],
                        linestyle="none", marker=marker, capsize=2, label=f"{kind} (int8 CV mean +- std)", alpha=0.8)
            for p in ps:
                ax.annotate(f"{p['label'].split(' ', 1)[1]} {p['coeff_bits']}b", (p[key], _acc(p)), fontsize=6,
                            textcoords="offset points", xytext=(4, -9))
        front = sorted((p for p in points if p["pareto"]), key=lambda p: p[key])
        ax.step([p[key] for p in front], [_acc(p) for p in front], where="post", color="gray", lw=0.8,
                label="Pareto front")
        ax.plot([chosen[key]], [_acc(chosen)], marker="*", markersize=16, color="red", linestyle="none",
                label=f"deployed (test {chosen['test_accuracy']:.3f}" + (f", firmware {firmware['accuracy']:.3f})"
                                                                         if firmware else ")"))
        if limit is not None and limit < 10 * max(p[key] for p in points):
            ax.axvline(limit, color="red", lw=0.8, ls="--", label="budget")
        ax.set_xlabel(label)
        ax.set_ylabel("int8 cross-validation accuracy (integer reference)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"fit on {board.name}: searched points, each at its better coefficient width", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
