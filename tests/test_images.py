"""MNIST-format (IDX) and CIFAR-10-format (pickle) readers on small files generated here in the real formats:
decode-once cache, truncated files, checksum mismatches, verified atomic downloads, augmentation, splits."""
import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from pipeline.data.cifar10 import CIFAR10DataModule
from pipeline.data.images import alternating_flip, random_crop, random_flip
from pipeline.data.mnist import IDXImageDataModule, read_idx
from pipeline.errors import ConfigError, DataError
from pipeline.train import run

RNG = np.random.default_rng(0)


def idx_bytes(array: np.ndarray) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist(folder, n_train=200, n_test=50, gz=True):
    """A tiny MNIST in the official layout; each class is a bright square at its own place, so it is learnable."""
    folder.mkdir(parents=True, exist_ok=True)
    md5s = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = RNG.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label:2 * label + 6, 2 * label:2 * label + 6] = 255
        for kind, array in (("images-idx3-ubyte", images), ("labels-idx1-ubyte", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}" + (".gz" if gz else "")
            content = gzip.compress(data) if gz else data
            (folder / name).write_bytes(content)
            md5s[name] = hashlib.md5(content).hexdigest()
    return md5s


def write_cifar(folder, per_batch=40, test=40):
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        labels = [i % 10 for i in range(n)]
        data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return names


def mnist_module(tmp_path, **overrides):
    settings = dict(name="mnist", input_shape=[1, 28, 28], num_classes=10, root=str(tmp_path / "data"),
                    folder="MNIST/raw", cache_dir=str(tmp_path / "cache"), mean=[0.1307], std=[0.3081],
                    batch_size=32, val_fraction=0.2, seed=0, files={}, mirrors=[], download=False)
    settings.update(overrides)
    return IDXImageDataModule(**settings)


def cifar_module(tmp_path, **overrides):
    settings = dict(name="cifar10", input_shape=[3, 32, 32], num_classes=10, root=str(tmp_path / "data"),
                    folder="cifar-10-batches-py", cache_dir=str(tmp_path / "cache"), mean=[0.5] * 3,
                    std=[0.25] * 3, crop_padding=4, flip=True, batch_size=32, val_fraction=0.2, seed=0,
                    archive_url="http://127.0.0.1:9/none.tar.gz", archive_md5="0" * 32, download=False)
    settings.update(overrides)
    return CIFAR10DataModule(**settings)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_gz_or_unpacked_and_caches_once(tmp_path, gz):
    write_mnist(tmp_path / "data" / "MNIST" / "raw", gz=gz)
    module = mnist_module(tmp_path)
    module.setup()
    x, y = module.splits["train"]
    assert x.shape == (160, 1, 28, 28) and x.dtype == torch.float32
    assert module.splits["val"][0].shape[0] == 40 and module.splits["test"][0].shape[0] == 50
    assert float(x.max()) == pytest.approx((1.0 - 0.1307) / 0.3081)  # normalised: 255 -> (1 - mean) / std
    # stratified: every class in both train and val
    assert set(y.tolist()) == set(module.splits["val"][1].tolist()) == set(range(10))
    cache = tmp_path / "cache" / "mnist.pt"
    assert cache.exists()
    stamp = cache.stat().st_mtime_ns
    again = mnist_module(tmp_path)
    again.setup()
    assert cache.stat().st_mtime_ns == stamp  # not decoded again
    assert torch.equal(again.splits["train"][0], x)  # same seed, same split


@pytest.mark.parametrize("make", [mnist_module, cifar_module], ids=["mnist", "cifar10"])
def test_prepared_splits_are_stored_as_pixels_and_restore_exactly(tmp_path, make):
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    module = make(tmp_path)
    module.setup()
    prepared = module.prepared()
    assert all(x.dtype == torch.uint8 for x, _ in prepared["splits"].values())
    restored = make(tmp_path, cache_dir=str(tmp_path / "no-cache"))
    restored.restore(prepared)
    for split, (x, y) in module.splits.items():
        assert torch.equal(restored.splits[split][0], x) and torch.equal(restored.splits[split][1], y)
    assert not (tmp_path / "no-cache").exists()  # nothing was decoded again


def test_truncated_idx_file_is_a_clear_error_and_writes_no_cache(tmp_path):
    folder = tmp_path / "data" / "MNIST" / "raw"
    write_mnist(folder, gz=False)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: truncated"):
        mnist_module(tmp_path).setup()
    assert not (tmp_path / "cache" / "mnist.pt").exists()


def test_truncated_gzip_is_a_clear_error(tmp_path):
    folder = tmp_path / "data" / "MNIST" / "raw"
    write_mnist(folder)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: truncated or corrupt gzip"):
        read_idx(path)


def test_missing_files_offline_say_where_to_put_them(tmp_path):
    module = mnist_module(tmp_path, download=True, mirrors=["http://127.0.0.1:9/"],
                          files={"train-images-idx3-ubyte.gz": "0" * 32, "train-labels-idx1-ubyte.gz": "0" * 32,
                                 "t10k-images-idx3-ubyte.gz": "0" * 32, "t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(DataError) as error:
        module.setup()
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and str(tmp_path / "data" / "MNIST" / "raw") in message
    assert "PIPELINE_DATA_DIR" in message and "download failed" in message


def test_download_verifies_checksums_and_then_trains(http_folder, tmp_path, compose_config):
    served, url = http_folder
    md5s = write_mnist(served)
    cfg = compose_config("data=mnist", "model=mlp", "trainer.max_epochs=5", "logger=none", "callbacks=none",
                         f"data.root={tmp_path}/data", f"data.cache_dir={tmp_path}/cache", "data.val_fraction=0.2")
    datamodule = instantiate(cfg.data, mirrors=[url], files=md5s)
    datamodule.setup()
    for name in md5s:
        assert (tmp_path / "data" / "MNIST" / "raw" / name).read_bytes() == (served / name).read_bytes()
    assert not list((tmp_path / "data" / "MNIST" / "raw").glob(".*part"))
    # the whole pipeline on the downloaded copy: each class is a square at its own place, chance is 0.1
    metrics = run(cfg, overrides=[])
    assert metrics["test/acc"] >= 0.9


def test_checksum_mismatch_writes_nothing(http_folder, tmp_path):
    served, url = http_folder
    md5s = write_mnist(served)
    md5s["train-images-idx3-ubyte.gz"] = "0" * 32
    module = mnist_module(tmp_path, download=True, mirrors=[url], files=md5s)
    with pytest.raises(DataError, match="checksum mismatch.*train-images-idx3-ubyte.gz.*nothing was written"):
        module.setup()
    raw = tmp_path / "data" / "MNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte.gz").exists()
    assert not list(raw.glob(".*part"))
    assert not (tmp_path / "cache" / "mnist.pt").exists()


def test_cifar_batches_decode_in_order_as_channel_planes(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar(folder)
    module = cifar_module(tmp_path)
    module.setup()
    x, y = module.splits["train"]
    assert x.shape == (160, 3, 32, 32) and module.splits["test"][0].shape == (40, 3, 32, 32)
    assert set(y.tolist()) == set(range(10))
    # each row of a batch is 1024 red values, then green, then blue, each 32x32 row by row
    decoded = module.decode()
    with open(folder / "data_batch_2", "rb") as handle:
        second = pickle.load(handle, encoding="bytes")
    first_of_second = decoded["train_x"][40]  # batch 1 holds 40 images
    assert torch.equal(first_of_second[1], torch.from_numpy(second[b"data"][0, 1024:2048].reshape(32, 32)))
    assert decoded["train_y"][40:80].tolist() == second[b"labels"]


def serve_cifar_archive(served, staging) -> str:
    """A tiny cifar-10-python.tar.gz in the official layout, served over HTTP; returns its md5."""
    write_cifar(staging / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    (served / "cifar-10-python.tar.gz").write_bytes(buffer.getvalue())
    return hashlib.md5(buffer.getvalue()).hexdigest()


def test_cifar_download_unpacks_the_verified_archive(http_folder, tmp_path):
    served, url = http_folder
    good = serve_cifar_archive(served, tmp_path / "staging")

    bad = cifar_module(tmp_path, download=True, archive_url=url + "cifar-10-python.tar.gz", archive_md5="f" * 32)
    with pytest.raises(DataError, match="checksum mismatch"):
        bad.setup()
    assert not (tmp_path / "data" / "cifar-10-batches-py").exists()
    assert not [p for p in (tmp_path / "data").iterdir()]  # no scratch folder left behind

    module = cifar_module(tmp_path, download=True, archive_url=url + "cifar-10-python.tar.gz", archive_md5=good)
    module.setup()
    assert module.splits["train"][0].shape == (160, 3, 32, 32)


def test_truncated_cifar_batch_is_a_clear_error_and_writes_no_cache(tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3: truncated or not a CIFAR-10 batch"):
        cifar_module(tmp_path).setup()
    assert not (tmp_path / "cache" / "cifar10.pt").exists()


def crop_offsets(cropped: torch.Tensor, x: torch.Tensor, padding: int) -> list[tuple[int, int]]:
    """For each image, where its window lies in the zero-padded original (a crop must be exactly one window)."""
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    h, w = cropped.shape[2:]
    offsets = []
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(padded.shape[2] - h + 1) for dx in range(padded.shape[3] - w + 1)
                 if torch.equal(cropped[i], padded[i, :, dy:dy + h, dx:dx + w])]
        assert len(found) == 1, f"image {i} is not a window of its padded original"
        offsets += found
    return offsets


def test_random_crop_shifts_each_image_by_its_own_offset():
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8) + 1  # every pixel distinct, none 0
    cropped = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert cropped.shape == x.shape
    offsets = crop_offsets(cropped, x, 2)
    assert len(set(offsets)) >= 15  # 25 possible offsets, drawn per image, not one per batch
    assert offsets.count((2, 2)) < 10  # (2, 2) is the unshifted image
    assert torch.equal(random_crop(x, 2, torch.Generator().manual_seed(5)),
                       random_crop(x, 2, torch.Generator().manual_seed(5)))


def test_small_random_crops_are_windows_anywhere_in_the_padded_image():
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).view(64, 3, 8, 8) + 1
    cropped = random_crop(x, 1, torch.Generator().manual_seed(0), size=5)
    assert cropped.shape == (64, 3, 5, 5)
    offsets = crop_offsets(cropped, x, 1)
    assert set(offsets) <= {(dy, dx) for dy in range(6) for dx in range(6)} and len(set(offsets)) >= 20


def test_the_first_epochs_train_on_small_crops_then_whole_images(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    module = cifar_module(tmp_path, crop_padding=2, small_crop_size=24, small_crop_epochs=2)
    model = BatchRecorder()
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    sizes = [tuple(batch.shape[2:]) for batch in model.seen["train"]]
    per_epoch = len(sizes) // 3
    assert sizes == [(24, 24)] * 2 * per_epoch + [(32, 32)] * per_epoch
    assert all(tuple(batch.shape[2:]) == (32, 32) for batch in model.seen["val"])  # evaluation sees whole images


@pytest.mark.parametrize("key, value", [("small_crop_size", 33), ("small_crop_size", 0), ("small_crop_epochs", -1)])
def test_bad_small_crops_name_the_key(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"data.{key}={value} is invalid"):
        cifar_module(tmp_path, **{key: value})


def test_random_flip_mirrors_about_half_the_images_left_to_right():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    flipped = random_flip(x, torch.Generator().manual_seed(1))
    mirrored = [torch.equal(flipped[i], x[i][:, :, torch.arange(7, -1, -1)]) for i in range(64)]
    kept = [torch.equal(flipped[i], x[i]) for i in range(64)]
    assert all(m != k for m, k in zip(mirrored, kept))  # each image either mirrored or untouched
    assert 16 <= sum(mirrored) <= 48


def test_alternating_flip_mirrors_each_example_in_every_other_pass():
    x = torch.randn(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    first = torch.rand(64, generator=torch.Generator().manual_seed(1)) < 0.5
    order = torch.randperm(64, generator=torch.Generator().manual_seed(2))
    passes = [alternating_flip(x[order], order, n, first) for n in range(3)]
    for n, seen in enumerate(passes):
        mirrored = torch.tensor([torch.equal(seen[i], x[j].flip(2)) for i, j in enumerate(order.tolist())])
        kept = torch.tensor([torch.equal(seen[i], x[j]) for i, j in enumerate(order.tolist())])
        assert torch.equal(mirrored, ~kept)  # each example either mirrored or untouched
        assert torch.equal(mirrored, first[order] if n % 2 == 0 else ~first[order])
    assert 16 <= int(first.sum()) <= 48


def test_alternating_flips_in_a_real_fit_show_each_image_both_ways_every_two_epochs(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    module = cifar_module(tmp_path, crop_padding=0, flip="alternate")
    model = BatchRecorder()
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    train = module.splits["train"][0]
    which = {image.numpy().tobytes(): (i, False) for i, image in enumerate(train)}
    which.update({image.flip(2).numpy().tobytes(): (i, True) for i, image in enumerate(train)})
    seen = torch.cat(model.seen["train"]).split(len(train))
    orientation = torch.zeros(4, len(train), dtype=torch.int8)
    for epoch, images in enumerate(seen):
        for image in images:
            index, mirrored = which[image.numpy().tobytes()]
            orientation[epoch, index] = 1 + mirrored
    assert (orientation > 0).all()  # every training image once per epoch, as itself or mirrored
    assert 0.3 < (orientation[0] == 2).float().mean() < 0.7
    assert torch.equal(orientation[1], 3 - orientation[0]) and torch.equal(orientation[2], orientation[0])
    assert torch.equal(orientation[3], orientation[1])


@pytest.mark.parametrize("flip", ["random", 1, None])
def test_an_unknown_flip_names_the_key_and_the_choices(tmp_path, flip):
    with pytest.raises(ConfigError, match=r"data.flip=.* is not one of false, true, alternate"):
        cifar_module(tmp_path, flip=flip)


class BatchRecorder(pl.LightningModule):
    """A linear classifier that keeps every batch it is given, as the training, validation and test steps see them."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen = {"train": [], "val": [], "test": []}

    def step(self, batch, stage):
        self.seen[stage].append(batch[0].clone())
        whole = torch.nn.functional.interpolate(batch[0], size=(32, 32))  # small crops too (progressive resizing)
        return torch.nn.functional.cross_entropy(self.layer(whole.flatten(1)), batch[1])

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("augment", [True, False], ids=["crop+flip", "off"])
def test_augmentation_changes_training_batches_only(tmp_path, augment):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py")
    module = cifar_module(tmp_path, crop_padding=4 if augment else 0, flip=augment)
    model = BatchRecorder()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=module)
    trainer.test(model, datamodule=module, verbose=False)
    originals = {image.numpy().tobytes() for image in module.splits["train"][0]}
    trained = torch.cat(model.seen["train"])
    assert len(trained) == 2 * 160
    untouched = sum(image.numpy().tobytes() in originals for image in trained)
    if augment:
        assert untouched < 0.1 * len(trained)  # unshifted and unflipped: 1 in 162
    else:
        assert untouched == len(trained)
    for stage, times in (("val", 2), ("test", 1)):  # the split itself, in order, every time
        assert torch.equal(torch.cat(model.seen[stage]), module.splits[stage][0].repeat(times, 1, 1, 1))
