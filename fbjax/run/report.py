"""The simulator run's closing table and reward-vs-KL plot."""

from __future__ import annotations


def format_table(rows: list[dict]) -> str:
    head = (f"{'method':<6} {'family':<18} {'feedback':<27} {'reward before -> after':>22} "
            f"{'win rate':>8} {'KL':>7} {'time s':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<6} {r['family']:<18} {r['feedback']:<27} "
            f"{r['reward_before']:>10.3f} -> {r['reward_after']:<8.3f} "
            f"{r['win_rate']:>8.3f} {r['kl']:>7.3f} {r['seconds']:>7.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], curves: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for r in rows:
        ax1.scatter(r["kl"], r["reward_after"], s=40)
        ax1.annotate(r["method"], (r["kl"], r["reward_after"]), textcoords="offset points",
                     xytext=(4, 4))
    if rows:
        ax1.axhline(rows[0]["reward_before"], color="gray", linestyle="--", label="SFT start")
    ax1.set_xlabel("KL(policy || SFT) per sequence")
    ax1.set_ylabel("oracle reward")
    ax1.set_title("reward vs KL")
    ax1.legend()
    for name, hist in curves.items():
        if hist:
            ax2.plot([h["step"] for h in hist], [h["loss"] for h in hist], label=name)
    ax2.set_xlabel("step")
    ax2.set_ylabel("training loss")
    ax2.set_yscale("symlog")
    ax2.set_title("training curves")
    # With dozens of methods (the sim table's merged run) the legend is taller than the axes:
    # a legend column per 12 methods beside the axes, laid out by the constrained layout,
    # where tight_layout gave up with a warning.
    ax2.legend(fontsize="small", ncol=max(1, -(-len(curves) // 12)), loc="upper left",
               bbox_to_anchor=(1.02, 1.0))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
