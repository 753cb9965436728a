"""Real tiny trainings: accuracy, what MLflow holds afterwards, the model round trip, determinism."""
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml
from hydra.utils import instantiate

from conftest import all_runs
from pipeline.train import run
from pipeline.models.building import build_network


def test_mlp_learns_digits_and_mlflow_records_the_run(compose_config, tracking_uri, tmp_path):
    cfg = compose_config("trainer.max_epochs=8", "optimizer.lr=0.003")
    metrics = run(cfg, overrides=["trainer.max_epochs=8", "optimizer.lr=0.003"])
    assert metrics["test/acc"] >= 0.93

    client, runs = all_runs(tracking_uri)
    assert len(runs) == 1
    recorded = runs[0]
    assert recorded.info.status == "FINISHED"
    assert recorded.info.run_name == "trainer.max_epochs=8 optimizer.lr=0.003"
    # flattened config as params
    assert recorded.data.params["model.hidden"] == "[256, 128]"
    assert recorded.data.params["optimizer.lr"] == "0.003"
    assert recorded.data.params["data.name"] == "digits"
    # per-epoch train and val metrics, and the test metrics
    assert len(client.get_metric_history(recorded.info.run_id, "val/acc")) == 8
    assert len(client.get_metric_history(recorded.info.run_id, "train/loss")) == 8
    assert recorded.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert "test/loss" in recorded.data.metrics
    # no per-step metrics by default
    assert not [key for key in recorded.data.metrics if "step" in key.split("/")[-1]]
    # composed config and overrides as artifacts
    config_text = mlflow.artifacts.load_text(f"runs:/{recorded.info.run_id}/config/config.yaml")
    assert yaml.safe_load(config_text)["trainer"]["max_epochs"] == 8
    overrides = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{recorded.info.run_id}/config/overrides.yaml"))
    assert overrides == ["trainer.max_epochs=8", "optimizer.lr=0.003"]
    # artifacts sit beside the database, not in the working directory
    assert (tmp_path / "mlruns").is_dir()


def test_logged_model_loads_back_and_predicts_the_same(compose_config, tracking_uri):
    cfg = compose_config("trainer.max_epochs=2", "regularization=batchnorm_dropout")
    run(cfg, overrides=[])
    _, runs = all_runs(tracking_uri)
    loaded = mlflow.pytorch.load_model(f"runs:/{runs[0].info.run_id}/model")

    # The model in the pipeline's hands after the run: rebuild it from the best checkpoint.
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    x, _ = datamodule.splits["test"]
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=False)
    network = build_network(cfg.model)
    network.load_state_dict({k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()
                             if k.startswith("model.")})
    network.eval()
    with torch.no_grad():
        expected = network(x)
        got = loaded(x)
    assert got.shape == (len(x), cfg.data.num_classes)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_same_config_and_seed_give_identical_metrics(compose_config):
    first = run(compose_config("trainer.max_epochs=3", "logger=none", "regularization=dropout"), overrides=[])
    second = run(compose_config("trainer.max_epochs=3", "logger=none", "regularization=dropout"), overrides=[])
    other_seed = run(compose_config("trainer.max_epochs=3", "logger=none", "regularization=dropout", "seed=7"),
                     overrides=[])
    assert first["test/acc"] == second["test/acc"]
    assert first["test/loss"] == second["test/loss"]
    assert first["test/loss"] != other_seed["test/loss"]


@pytest.mark.parametrize("data", ["xor", "moons", "spirals"])
def test_mlp_solves_toy_sets_that_softmax_regression_cannot(compose_config, data):
    mlp = run(compose_config(f"data={data}", "trainer.max_epochs=30", "logger=none", "callbacks=none",
                             "optimizer.lr=0.01", "model.hidden=[64,64]"), overrides=[])
    assert mlp["test/acc"] >= 0.9
    if data == "xor":
        linear = run(compose_config(f"data={data}", "model=linear", "trainer.max_epochs=30", "logger=none",
                                    "callbacks=none", "optimizer.lr=0.01"), overrides=[])
        assert linear["test/acc"] < 0.75


def test_classification_run_logs_confusion_matrix_and_misclassified_grid(compose_config, tracking_uri):
    run(compose_config("trainer.max_epochs=1", "model=linear", "optimizer=sgd", "optimizer.lr=0.001"), overrides=[])
    client, runs = all_runs(tracking_uri)
    plots = {a.path for a in client.list_artifacts(runs[0].info.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/misclassified.png", "plots/explanations.png",
                     "plots/explanations.json"}
    for name in plots - {"plots/explanations.json"}:
        assert open(client.download_artifacts(runs[0].info.run_id, name), "rb").read(4) == b"\x89PNG"


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    from pipeline.viz.classification import confusion_matrix

    matrix = confusion_matrix(torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 2, 0]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_each_epochs_evaluation_metrics_are_that_epochs_alone(compose_config):
    """Logged once per epoch from metrics updated at every step (Task.log_epoch_metric): the last validation's
    numbers are those of the final weights on the validation split, not a mean over every epoch so far."""
    import pytorch_lightning as pl

    from pipeline.train import build_data, build_task

    cfg = compose_config("logger=none", "trainer.max_epochs=3", "optimizer.lr=0.003")
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(task, datamodule=datamodule)
    task.eval()
    with torch.no_grad():
        x, y = datamodule.splits["val"]
        logits = task.model(x)
        accuracy = float((logits.argmax(-1) == y).float().mean())
        loss = float(task.loss(logits, y))
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(accuracy, abs=1e-6)
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(loss, abs=1e-5)
    assert float(trainer.callback_metrics["val/acc_best"]) >= accuracy - 1e-6
    tested = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    x, y = datamodule.splits["test"]
    with torch.no_grad():
        assert tested["test/acc"] == pytest.approx(float((task.model(x).argmax(-1) == y).float().mean()), abs=1e-6)
