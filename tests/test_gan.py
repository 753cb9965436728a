"""task=gan with model=dcgan as a user runs it: real Lightning (manual optimisation), real MLflow on SQLite, MNIST-
format files generated here, a real `dvc exp run`; the judge's measures on cases whose answer is known."""
import json
import logging
import math

import mlflow
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from conftest import all_runs
from pipeline.errors import ConfigError
from pipeline.tasks.gan_scores import class_entropy, frechet_distance, inception_score
from pipeline.train import build_data, build_task, run
from test_dvc import make_repo, read_metrics, set_flags, sh
from test_images import write_mnist

QUIET = ["~callbacks.progress_bar", "threads=1"]
TEST_METRICS = {"score", "score_real", "score_ratio", "class_entropy", "frechet", "frechet_train_test", "judge_acc",
                "samples"}


def tiny_gan(tmp_path) -> list[str]:
    """A DCGAN of a few channels, a judge trained for a few steps, a handful of samples: seconds."""
    return ["task=gan", "model=dcgan", "model.latent_dim=8", "model.generator_widths=[8,4]",
            "model.discriminator_widths=[4,8]", "task.samples=16", "task.val_samples=20", "task.test_samples=50",
            "task.judge_recipe.epochs=1", "task.judge_recipe.min_steps=20", f"task.cache_dir={tmp_path}/judges"]


def tiny_mnist(tmp_path) -> list[str]:
    """MNIST-format files (200 training, 50 test images of 28x28) in tmp_path."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    return ["data=mnist", f"data.root={tmp_path}/data", f"data.cache_dir={tmp_path}/cache", "data.download=false",
            "data.batch_size=32"]


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_gan_run_logs_scores_grids_a_gif_and_a_generator(compose_config, tracking_uri, tmp_path, caplog):
    cfg = compose_config(*tiny_gan(tmp_path), *tiny_mnist(tmp_path), "trainer.max_epochs=2", *QUIET)
    with caplog.at_level(logging.INFO, logger="pipeline.judge"):
        metrics = run(cfg, overrides=[])
    assert "task.judge is null: training a LeNet judge" in caplog.text  # it says so

    client, (tracked,) = all_runs(tracking_uri)
    logged = tracked.data.metrics
    for key in TEST_METRICS:
        assert math.isfinite(logged[f"test/{key}"]) and logged[f"test/{key}"] == pytest.approx(metrics[f"test/{key}"])
    assert logged["test/samples"] == 50  # every test image, and as many samples
    assert 1 <= logged["test/score"] <= 10 and 1 <= logged["test/score_real"] <= 10
    assert 0 <= logged["test/class_entropy"] <= math.log(10) + 1e-6
    assert logged["test/score_ratio"] == pytest.approx(logged["test/score"] / logged["test/score_real"], rel=1e-5)
    assert logged["test/frechet"] > logged["test/frechet_train_test"] >= 0  # two epochs do not fool the judge
    assert logged["test/judge_acc"] > 0.5  # each class is a bright square at its own place: easy to judge
    history = {key: [m.value for m in client.get_metric_history(tracked.info.run_id, key)]
               for key in ("val/frechet", "train/loss_d", "train/loss_g")}
    assert all(len(values) == 2 for values in history.values())
    assert logged["val/frechet_best"] == pytest.approx(min(history["val/frechet"]))
    assert logged["val/score_best"] >= logged["val/score"]

    files = artifacts(client, tracked.info.run_id)
    assert {"plots/samples/epoch_001.png", "plots/samples/epoch_002.png", "plots/samples.png", "plots/samples.gif",
            "plots/classes.png"} <= files
    gif = Image.open(mlflow.artifacts.download_artifacts(f"runs:/{tracked.info.run_id}/plots/samples.gif"))
    assert gif.format == "GIF" and gif.n_frames == 2  # one grid per epoch
    description = json.loads(mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/data/description.json"))
    assert description["task"] == "gan" and "trained here on data=mnist" in description["judge"]

    generator = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
    with torch.no_grad():
        images = generator(torch.randn(5, 8))
    assert images.shape == (5, 1, 28, 28) and 0 <= float(images.min()) and float(images.max()) <= 1

    # The judge is cached: a second run of the same data trains none.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.judge"):
        run(compose_config(*tiny_gan(tmp_path), *tiny_mnist(tmp_path), "trainer.max_epochs=1", *QUIET), overrides=[])
    assert "training a LeNet judge" not in caplog.text and "cached in" in caplog.text


class OptimizerSteps(pl.Callback):
    """The parameters of both networks before each optimizer step and after the batch: what each step changed.
    These hooks are the ones StopOnDivergence uses, so they are seen to fire under manual optimisation too."""

    def __init__(self):
        self.snapshots, self.backward_calls = [], 0

    def snapshot(self, task):
        return {name: {key: value.detach().clone() for key, value in getattr(task.model, name).named_parameters()}
                for name in ("discriminator", "generator")}

    def on_before_backward(self, trainer, task, loss):
        self.backward_calls += 1

    def on_before_optimizer_step(self, trainer, task, optimizer):
        self.snapshots.append(self.snapshot(task))

    def on_train_batch_end(self, trainer, task, outputs, batch, batch_idx):
        self.snapshots.append(self.snapshot(task))


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[key], after[key]) for key in before)


def test_the_discriminator_step_changes_only_the_discriminator_and_the_generator_step_only_the_generator(
        compose_config, tmp_path):
    cfg = compose_config(*tiny_gan(tmp_path), "data=digits", "logger=none", *QUIET)
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    steps = OptimizerSteps()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[steps])
    trainer.fit(task, datamodule=datamodule)
    before_d, before_g, after = steps.snapshots  # before the D step, before the G step (after D's), after both
    assert steps.backward_calls == 2
    assert changed(before_d["discriminator"], before_g["discriminator"])
    assert not changed(before_d["generator"], before_g["generator"])
    assert changed(before_g["generator"], after["generator"])
    assert not changed(before_g["discriminator"], after["discriminator"])


def test_a_gan_that_diverges_is_stopped_under_manual_optimisation(compose_config, tmp_path):
    from pipeline.divergence import StopOnDivergence, TrainingDiverged

    cfg = compose_config(*tiny_gan(tmp_path), "data=digits", "logger=none", *QUIET)
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    with torch.no_grad():
        task.model.discriminator.logit.bias.fill_(float("nan"))  # every logit NaN: the D loss is NaN at once
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, callbacks=[StopOnDivergence()])
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 0, step 0: the loss is nan"):
        trainer.fit(task, datamodule=datamodule)


def test_the_scores_on_cases_with_a_known_answer():
    classes = 10
    confident = torch.eye(classes).repeat(30, 1)  # every image certain of its class, every class 30 times
    assert inception_score(confident) == pytest.approx(classes, rel=1e-6)
    assert class_entropy(confident) == pytest.approx(math.log(classes))
    assert inception_score(torch.full((300, classes), 1 / classes)) == pytest.approx(1.0)  # the judge can't tell
    collapsed = torch.eye(classes)[torch.zeros(300, dtype=torch.long)]  # one class only: a collapsed generator
    assert inception_score(collapsed) == pytest.approx(1.0) and class_entropy(collapsed) == 0

    features = torch.randn(2000, 6, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-8)
    shift = torch.tensor([3.0, 0, 0, 0, 4.0, 0])
    assert frechet_distance(features, features + shift) == pytest.approx(25.0, rel=1e-6)  # |shift|², same spread
    # x against 2x: the means differ by mu, the spreads S and 4S give tr S + 4 tr S - 2·2 tr S = tr S
    double = features.double()
    expected = double.mean(0).pow(2).sum() + torch.cov(double.T).trace()
    assert frechet_distance(features, 2 * features) == pytest.approx(float(expected), rel=1e-6)


def test_a_judge_named_by_its_run_id_is_the_judge(compose_config, tracking_uri, tmp_path, caplog):
    classifier = run(compose_config("task=classify", "model=lenet", "data=digits", "trainer.max_epochs=3",
                                    "optimizer.lr=0.005", *QUIET), overrides=[])
    _, (judge_run,) = all_runs(tracking_uri)
    cfg = compose_config(*tiny_gan(tmp_path), "data=digits", f"task.judge={judge_run.info.run_id}",
                         "task.test_samples=1000", "trainer.max_epochs=1", *QUIET)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        metrics = run(cfg, overrides=[])
    assert "training a LeNet judge" not in caplog.text and judge_run.info.run_id in caplog.text
    # The same classifier on the same 360 test images: the judge's accuracy is the classify run's.
    assert metrics["test/judge_acc"] == pytest.approx(classifier["test/acc"], abs=1e-6)
    client, runs = all_runs(tracking_uri)
    (gan,) = [tracked for tracked in runs if tracked.info.run_id != judge_run.info.run_id]
    description = json.loads(mlflow.artifacts.load_text(f"runs:/{gan.info.run_id}/data/description.json"))
    assert judge_run.info.run_id in description["judge"]

    # A judge of other data, or a run that is not a classifier, is refused in one line.
    with pytest.raises(ConfigError, match=r"classifies data=digits .*: a judge must know data=mnist's classes"):
        run(compose_config(*tiny_gan(tmp_path), *tiny_mnist(tmp_path), f"task.judge={judge_run.info.run_id}",
                           "trainer.max_epochs=1", *QUIET), overrides=[])
    with pytest.raises(ConfigError, match=r"is a task=gan run: a judge is a classifier"):
        run(compose_config(*tiny_gan(tmp_path), "data=digits", f"task.judge={gan.info.run_id}",
                           "trainer.max_epochs=1", *QUIET), overrides=[])


@pytest.mark.parametrize("overrides,message", [
    (["model=dcgan", "task=gan", "data=moons"], "task=gan needs image data"),
    (["model=mlp", "task=gan"], "model MLP is not a GAN: task=gan trains a generator against a discriminator"),
    (["model=dcgan", "task=gan", "model.generator_widths=[8,8,8,8]"],
     "model DCGAN cannot draw input_shape [1, 8, 8]: model.generator_widths has 4 stride-2 stages"),
    (["model=dcgan", "task=gan", "scheduler=step"], "task=gan steps its two optimizers itself"),
    (["model=dcgan", "task=gan", "trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val=1.0: task=gan"),
    (["model=dcgan", "task=gan", "task.monitor=val/loss"], "task.monitor=val/loss with task.mode=min: task=gan"),
    (["model=dcgan", "task=gan", "task.monitor=val/score"], "keeps the best epoch by val/frechet with mode min or "
                                                             "val/score with mode max"),
])
def test_what_a_gan_cannot_train_is_refused_in_one_line(compose_config, overrides, message):
    from hydra.errors import InstantiationException

    from pipeline.checks import check_job
    from pipeline.cli import one_line

    with pytest.raises((ConfigError, InstantiationException)) as error:
        check_job(compose_config(*overrides, "logger=none", *QUIET))
    assert message in one_line(error.value) and "\n" not in one_line(error.value)


# --- the DVC pipeline: `dvc exp run -S task=gan ...` (the pattern of test_dvc.py) ------------------------------
def test_dvc_exp_run_of_a_gan_writes_its_scores_and_plots(tmp_path):
    repo = make_repo(tmp_path / "project")
    overrides = [override for override in tiny_gan(tmp_path) if not override.startswith("task.cache_dir")]
    overrides += ["data=digits", "trainer.max_epochs=2", "threads=1"]
    sh(repo, "dvc", "exp", "run", *set_flags(overrides))

    metrics = read_metrics(repo)
    assert TEST_METRICS <= set(metrics) and all(math.isfinite(metrics[key]) for key in TEST_METRICS)
    assert metrics["samples"] == 50
    plots = {path.name for path in (repo / "results/visualize").iterdir()}
    assert {"learning_curves.png", "samples.png", "samples.gif", "classes.png"} <= plots
    assert Image.open(repo / "results/visualize/samples.gif").n_frames >= 1  # the grids up to the best epoch
    assert list((repo / "data" / "cache" / "judges").glob("digits-*.pt"))  # the judge, cached in the project
    client, (tracked,) = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert tracked.data.metrics["test/score"] == pytest.approx(metrics["score"], abs=1e-5)
    assert "plots/samples/epoch_002.png" in artifacts(client, tracked.info.run_id)
