"""Generated two-dimensional toy sets (xor, moons, spirals): seeded, so the same seed gives the same points."""
import math

import numpy as np
import torch
from sklearn.datasets import make_moons

from pipeline.data.in_memory import InMemoryDataModule


def xor_points(n: int, noise: float, rng: np.random.Generator):
    centres = rng.integers(0, 2, size=(n, 2))
    x = (centres * 2 - 1) + rng.normal(scale=noise, size=(n, 2))
    return x, centres[:, 0] ^ centres[:, 1]


def moon_points(n: int, noise: float, rng: np.random.Generator):
    return make_moons(n_samples=n, noise=noise, random_state=int(rng.integers(2**31)))


def spiral_points(n: int, noise: float, rng: np.random.Generator, arms: int):
    y = rng.integers(0, arms, size=n)
    radius = rng.uniform(0.05, 1.0, size=n)
    angle = 4.0 * radius + y * 2.0 * math.pi / arms + rng.normal(scale=noise, size=n)
    x = np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)
    return x, y


class ToyDataModule(InMemoryDataModule):
    """Points in the plane; `kind` picks the generator, `num_classes` the number of spiral arms."""

    KINDS = ("xor", "moons", "spirals")

    def __init__(self, kind: str, num_samples: int, noise: float, **common):
        super().__init__(**common)
        if kind not in self.KINDS:
            raise ValueError(f"data.kind={kind!r} is not one of {', '.join(self.KINDS)}")
        self.kind = kind
        self.num_samples = num_samples
        self.noise = noise

    def load(self):
        rng = np.random.default_rng(self.seed)
        if self.kind == "xor":
            x, y = xor_points(self.num_samples, self.noise, rng)
        elif self.kind == "moons":
            x, y = moon_points(self.num_samples, self.noise, rng)
        else:
            x, y = spiral_points(self.num_samples, self.noise, rng, arms=self.num_classes)
        return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
