"""Plots written as PNG files (for MLflow artifacts and the DVC visualize stage); never shown on a display."""
from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when a plot is made (it costs ~0.3 s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure, path: Path, dpi: int = 110) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path
