"""CIFAR-10: the official Python pickle batches in `<root>/cifar-10-batches-py/`."""
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import torch

from pipeline.data.download import download
from pipeline.data.images import ImageDataModule
from pipeline.errors import DataError
from pipeline.files import scratch_folder

TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> uint8 images (N, 3, 32, 32) and int labels (N,)."""
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        data, labels = batch[b"data"], batch[b"labels"]
    except (EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise DataError(f"{path}: truncated or not a CIFAR-10 batch ({type(error).__name__}: {error}); "
                        "delete it and download again") from None
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"{path}: expected a (N, 3072) uint8 array and N labels, got {list(data.shape)} "
                        f"and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


class CIFAR10DataModule(ImageDataModule):
    """32x32 colour images of 10 classes. The official archive is downloaded, verified and unpacked atomically."""

    def __init__(self, archive_url: str, archive_md5: str, **common):
        super().__init__(**common)
        self.archive_url = archive_url
        self.archive_md5 = archive_md5

    def required_files(self) -> list[Path]:
        return [self.folder / name for name in TRAIN_BATCHES + TEST_BATCHES]

    def fetch(self) -> None:
        with scratch_folder(self.folder.parent, "cifar-download") as scratch:
            archive = download([self.archive_url], Path(scratch) / "cifar-10-python.tar.gz", self.archive_md5)
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
            unpacked = Path(scratch) / self.folder.name
            if not unpacked.is_dir():
                raise DataError(f"{self.archive_url}: the archive has no {self.folder.name}/ folder")
            if self.folder.exists():  # a partial folder from an earlier copy: keep what the user had
                for item in unpacked.iterdir():
                    if not (self.folder / item.name).exists():
                        shutil.move(str(item), self.folder / item.name)
            else:
                os.replace(unpacked, self.folder)

    def decode(self) -> dict[str, torch.Tensor]:
        arrays = {}
        for split, names in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
            parts = [read_cifar_batch(self.folder / name) for name in names]
            arrays[f"{split}_x"] = torch.from_numpy(np.concatenate([images for images, _ in parts]))
            arrays[f"{split}_y"] = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
        return arrays
