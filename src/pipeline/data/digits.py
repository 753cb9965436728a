"""scikit-learn's bundled 8x8 digits: the offline default dataset."""
import torch
from sklearn.datasets import load_digits

from pipeline.data.in_memory import InMemoryDataModule


class DigitsDataModule(InMemoryDataModule):
    """1797 greyscale 8x8 digits, pixel values 0..16 scaled to [0, 1], shaped (N, 1, 8, 8)."""

    def load(self):
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        return x, y

    def unit_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The pixels in [0, 1], as tasks that rebuild images read them: these are already."""
        return x
