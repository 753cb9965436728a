"""MNIST and Fashion-MNIST: four IDX files (`<root>/MNIST/raw/`, `<root>/FashionMNIST/raw/`), .gz or unpacked."""
import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from pipeline.data.download import download
from pipeline.data.images import ImageDataModule
from pipeline.errors import DataError

ROLES = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
         "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}


def read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped), checking its header against its length."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as handle:
            data = handle.read()
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(f"{path}: truncated or corrupt gzip file ({error}); delete it and download again") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file (header {data[:4].hex() or 'empty'})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(f"{path}: truncated or corrupt: {len(data)} bytes where its header {list(dims)} "
                        f"says {expected}; delete it and download again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class IDXImageDataModule(ImageDataModule):
    """Grey 28x28 digits or clothes. `files` maps each official .gz name to its md5; `mirrors` are base URLs."""

    def __init__(self, files: dict, mirrors: list, **common):
        super().__init__(**common)
        self.files = dict(files)
        self.mirrors = list(mirrors)

    def path_for(self, stem: str) -> Path:
        """The unpacked file if it is there, else the .gz (which may still have to be downloaded)."""
        plain = self.folder / stem
        return plain if plain.exists() else self.folder / f"{stem}.gz"

    def required_files(self) -> list[Path]:
        return [self.path_for(stem) for stem in ROLES.values()]

    def fetch(self) -> None:
        for path in self.missing_files():
            download([mirror + path.name for mirror in self.mirrors], path, self.files[path.name])

    def decode(self) -> dict[str, torch.Tensor]:
        arrays = {role: torch.from_numpy(read_idx(self.path_for(stem)).copy()) for role, stem in ROLES.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_x"], arrays[f"{split}_y"]
            if images.ndim != 3 or len(images) != len(labels):
                raise DataError(f"data={self.name}: {split} images {list(images.shape)} and labels "
                                f"{list(labels.shape)} do not match")
            arrays[f"{split}_x"] = images.unsqueeze(1)  # (N, 1, 28, 28)
        return arrays
