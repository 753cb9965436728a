"""The convergence comparison of a sweep: per-epoch validation curves of every child on shared axes."""
from pathlib import Path

from pipeline.viz import pyplot, save


def plot_sweep_curves(histories: dict[str, dict[str, list[float]]], metrics: list[str], path: Path) -> Path:
    """histories: run name -> metric -> values per epoch. One panel per metric, one line per run."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(metrics), figsize=(6 * len(metrics), 4.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for name, history in histories.items():
            values = history.get(metric, [])
            if values:
                axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
        axis.set_title(metric)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    return save(figure, path)
