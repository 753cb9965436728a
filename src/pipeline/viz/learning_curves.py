"""Learning curves of one run: each quantity it logged per epoch (loss, accuracy, MSE, KL, ...), training against
validation."""
from pathlib import Path

from pipeline.viz import pyplot, save


def plot_learning_curves(history: list[dict[str, float]], path: Path, dpi: int = 110) -> Path:
    """history: one row per epoch ({"epoch": 1, "train/loss": ..., "val/acc": ...}). A panel per quantity."""
    logged = {key.split("/", 1)[1] for row in history for key in row
              if key.split("/")[0] in ("train", "val") and not key.endswith(("_best", "_step"))}
    quantities = sorted(logged, key=lambda quantity: (quantity != "loss", quantity != "acc", quantity))
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 3.8), squeeze=False)
    for axis, quantity in zip(axes[0], quantities):
        for split in ("train", "val"):
            points = [(row["epoch"], row[f"{split}/{quantity}"]) for row in history
                      if row.get(f"{split}/{quantity}") is not None]
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3, label=split)
        axis.set(title=quantity, xlabel="epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    return save(figure, path, dpi)
