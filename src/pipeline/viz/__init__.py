"""Plots written as PNG files (for MLflow artifacts and the DVC visualize stage); never shown on a display."""
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when a plot is made (it costs ~0.3 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path, dpi: int = 110, tight: bool = True) -> Path:
    """Write `figure` as PNG and close it. tight=False: the figure's own layout as it is (tight_layout draws the
    whole figure once more to measure it: a third of a simple figure's cost). After tight_layout the figure keeps
    a placeholder layout engine, for which savefig draws everything once more before rendering (16 % of a confusion
    matrix's cost, the same pixels): it is removed."""
    if tight:
        figure.tight_layout()
        figure.set_layout_engine(None)
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
