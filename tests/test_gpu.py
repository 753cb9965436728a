"""The GPU path (issue 15): where CUDA is present, `accelerator=auto` trains there, in bf16 (or fp16) mixed
precision, from batches served on the GPU (or from pinned memory where a split does not fit), and every experiment
of the curriculum runs there. CI has no GPU: these tests are skipped there and run on a GPU machine with
`pytest -n0 tests/test_gpu.py` (no MLflow needed: the runs log to CSV files)."""
import functools
import re
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from conftest import CONF, ROOT
from pipeline.data import placement
from pipeline.data.batches import GroupedBatches
from pipeline.data.images import alternating_flip, random_crop, random_flip
from pipeline.divergence import TrainingDiverged
from pipeline.train import build_data, build_task, build_trainer, run, start
from test_fused_steps import fitted, weights
from test_images import write_cifar, write_mnist
from test_text import planted_text

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))
# Every network a classifier trains, and each recurrent one on the names: one batch each on the GPU.
NETWORKS = [("digits", model) for model in ("linear", "mlp", "cnn", "lenet", "vgg", "resnet")] + [
    ("chars", model) for model in ("rnn", "lstm", "gru")]


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """Small files in the official layouts of every dataset the experiments read."""
    root = tmp_path / "data"
    write_mnist(root / "MNIST" / "raw", n_train=400, n_test=100)
    write_mnist(root / "FashionMNIST" / "raw", n_train=400, n_test=100)
    write_cifar(root / "cifar-10-batches-py", per_batch=200, test=100)
    (root / "names").mkdir()
    for language in ("Anglo", "Basque", "Czech"):
        names = [language[:2] + vowel + end for vowel in "aeiou" for end in ("l", "n", "r", "s", "ta", "nd")]
        (root / "names" / f"{language}.txt").write_text("\n".join(names) + "\n")
    (root / "tinyshakespeare").mkdir()
    (root / "tinyshakespeare" / "input.txt").write_text(planted_text(seed=1, length=3000))
    monkeypatch.setenv("PIPELINE_DATA_DIR", str(root))
    monkeypatch.setenv("PIPELINE_CACHE_DIR", str(tmp_path / "cache"))
    return root


def configured(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"paths.output_dir={tmp_path}/out", "logger=csv", *overrides])


class WhereBatchesComeFrom(pl.Callback):
    """The device of the weights and of the first training batch as the datamodule serves it (before Lightning
    moves it), and whether that batch is in pinned memory."""

    def __init__(self):
        self.seen = {}

    def on_train_start(self, trainer, pl_module):
        x, _ = next(iter(trainer.datamodule.train_dataloader()))
        self.seen = {"batch": (x.device.type, x.is_pinned()), "weights": next(pl_module.parameters()).device.type}


@pytest.mark.parametrize("fits", [True, False])
def test_the_default_run_trains_on_the_gpu_in_mixed_precision_from_batches_there(tmp_path, monkeypatch, fits):
    if not fits:  # no split fits: served from the host, in pinned memory
        monkeypatch.setattr(placement, "SHARE_OF_FREE_MEMORY", 0.0)
    cfg = configured(tmp_path, "callbacks=none", "trainer.max_epochs=10")
    start(cfg)  # what every run does first
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    probe = WhereBatchesComeFrom()
    trainer = build_trainer(cfg, None, callbacks=[probe])
    trainer.fit(task, datamodule=datamodule)
    assert trainer.precision == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    assert torch.get_float32_matmul_precision() == "high"
    assert probe.seen["weights"] == "cuda"
    assert probe.seen["batch"] == (("cuda", False) if fits else ("cpu", True))
    (result,) = trainer.test(task, datamodule=datamodule, verbose=False)
    assert result["test/acc"] > 0.85  # digits: 0.96 on a CPU in 20 epochs


def test_divergence_on_the_gpu_stops_the_run_within_a_step(tmp_path):
    cfg = configured(tmp_path, "callbacks=none", "optimizer=sgd", "optimizer.lr=1e30", "trainer.max_epochs=3")
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch 0, step \d+"):
        run(cfg, overrides=[])


def augmented(device: str) -> list[torch.Tensor]:
    """The training augmentations of a batch on `device`, from the same CPU-seeded draws (returned on the CPU)."""
    def seeded(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    x = torch.rand(64, 3, 32, 32, generator=seeded(0)).to(device)
    order = torch.randperm(64, generator=seeded(1)).to(device)
    first = torch.rand(64, generator=seeded(2)) < 0.5  # kept on the CPU, as the datamodule keeps it
    made = [random_crop(x, 2, seeded(3)), random_crop(x, 2, seeded(3), 24), random_flip(x, seeded(4))]
    made += [alternating_flip(x[order].clone(), order, passes, first) for passes in (0, 1)]
    return [image.cpu() for image in made]


def test_the_augmentations_make_the_same_images_on_the_gpu():
    for on_cpu, on_gpu in zip(augmented("cpu"), augmented("cuda")):
        assert torch.equal(on_cpu, on_gpu)


def test_alternating_flips_and_small_crops_train_on_gpu_resident_splits(tmp_path, data_root):
    cfg = configured(tmp_path, "experiment=cifar10_cnn", "model.widths=[8,16,16]", "data.flip=alternate",
                     "data.small_crop_size=24", "data.small_crop_epochs=1", "data.batch_size=64",
                     "trainer.max_epochs=3", "viz.explain_images=4", "viz.explain_steps=2")
    metrics = run(cfg, overrides=[])
    assert metrics["test/acc"] >= 0 and all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics


def test_grouped_steps_train_on_the_gpu_as_one_step_per_call(tmp_path):
    """fused_steps (several optimizer steps per call from Lightning's loop, fused_steps.py) on CUDA: the same steps
    and weights as one step per call."""
    compose = functools.partial(configured, tmp_path)
    runs = {group: fitted(compose, "model.hidden=[16]", "data.batch_size=150", "trainer.max_epochs=2",
                          f"fused_steps={group}") for group in (4, 1)}
    (grouped, grouped_task, _), (single, single_task, _) = runs[4], runs[1]
    assert isinstance(grouped.train_dataloader, GroupedBatches) and grouped.train_dataloader.group == 4
    assert grouped.global_step == single.global_step > 0
    assert next(single_task.parameters()).device.type == "cuda"
    assert all(torch.allclose(mine.cpu(), theirs.cpu(), rtol=1e-5, atol=1e-6)
               for mine, theirs in zip(weights(grouped_task), weights(single_task)))


def test_a_parallel_sweep_trains_every_job_on_the_gpu(tmp_path):
    """Forked joblib workers (search/launcher_workers.py) each take the GPU: the process they are forked from
    imports torch but must not have started CUDA."""
    command = [sys.executable, str(ROOT / "run.py"), "-m", "logger=csv", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", "optimizer.lr=0.01,0.1", "trainer.max_epochs=2",
               f"hydra.sweep.dir={tmp_path}/sweep"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in (0, 1):
        log = (tmp_path / "sweep" / str(job) / "run.log").read_text()
        assert re.search(r"GPU available: True.*, used: True", log), log[-2000:]


@pytest.mark.parametrize("data,model", NETWORKS)
def test_every_network_trains_a_batch_on_the_gpu(tmp_path, data_root, data, model):
    metrics = run(configured(tmp_path, f"data={data}", f"model={model}", "trainer=debug", "callbacks=none"),
                  overrides=[])
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_on_the_gpu(tmp_path, data_root, experiment):
    """One batch of each split, then everything the run does after the test (plots, explanations, exports)."""
    metrics = run(configured(tmp_path, f"experiment={experiment}", "trainer=debug"), overrides=[])
    assert metrics and all(torch.isfinite(torch.tensor(value)) for value in metrics.values()), metrics
