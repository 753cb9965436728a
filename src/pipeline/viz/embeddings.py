"""Where a trained embedding puts the most frequent words: related words should land near each other."""
from pathlib import Path

import numpy as np
import torch

from pipeline.viz import pyplot, save


def plot_word_projection(words: list[str], vectors: torch.Tensor, path: Path, dpi: int = 110, count: int = 150) -> Path:
    """The first `count` words (ids are in frequency order) written at their vectors, PCA-projected when D > 2."""
    if vectors.dim() != 2 or len(words) != len(vectors) or len(words) == 0:
        raise ValueError(f"vectors must be (V, D) with one row per word, got shape {tuple(vectors.shape)} "
                         f"for {len(words)} words")
    count = min(count, len(words))
    points = vectors[:count].detach().float().cpu().numpy()
    size = points.shape[1]
    if size > 2:
        if count < 2:
            raise ValueError(f"PCA needs at least 2 words, got count = {count}")
        from sklearn.decomposition import PCA  # imported here: scikit-learn costs a second to import

        points = PCA(n_components=2).fit_transform(points)
        title = f"the {count} most frequent words, PCA of {size}-d vectors"
    else:
        title = f"the {count} most frequent words, {size}-d vectors"
        if size == 1:  # one coordinate: spread the words out by frequency rank
            points = np.column_stack([points[:, 0], np.arange(count)])
    figure, axis = pyplot().subplots(figsize=(9, 9))
    axis.scatter(points[:, 0], points[:, 1], s=4, alpha=0.3, color="tab:blue")
    for word, (x, y) in zip(words, points):
        axis.annotate(word, (x, y), fontsize=7, ha="center", va="bottom")
    labels = ("PC 1", "PC 2") if size > 2 else ("dimension 1", "dimension 2" if size == 2 else "frequency rank")
    axis.set(xlabel=labels[0], ylabel=labels[1], title=title)
    return save(figure, path, dpi)
