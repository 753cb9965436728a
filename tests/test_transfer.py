"""Transfer learning as a user runs it: a network starts from another run's weights (model.init_from: a run id,
latest:<experiment> or a checkpoint file), only the tensors that match by name and shape, and model.freeze keeps
named parts fixed while the rest trains."""

import mlflow
import mlflow.pytorch
import pytest
import torch

from conftest import all_runs
from pipeline import transfer
from pipeline.errors import ConfigError
from pipeline.models.building import build_network
from pipeline.train import run
from test_images import write_mnist

CNN = ["model=cnn", "threads=1", "trainer.max_epochs=1"]


def pretrained(compose_config, *overrides: str) -> tuple[str, dict[str, torch.Tensor]]:
    """A CNN trained one epoch on all ten digits: its run id and the weights it logged."""
    cfg = compose_config(*CNN, "experiment_name=pretrain", *overrides)
    run(cfg, overrides=[])
    client, runs = all_runs(cfg.logger.tracking_uri)
    run_id = next(r.info.run_id for r in runs if client.get_experiment(r.info.experiment_id).name == "pretrain")
    return run_id, dict(mlflow.pytorch.load_model(f"runs:/{run_id}/model").state_dict())


def test_init_from_a_run_loads_exactly_the_tensors_that_match_by_name_and_shape(compose_config):
    run_id, source = pretrained(compose_config)
    # Five classes: every tensor matches except the last layer's, whose shape differs (5 rows, not 10).
    cfg = compose_config(*CNN, "data.classes=[5,6,7,8,9]", "data.num_classes=5", f"model.init_from={run_id}")
    network = build_network(cfg.model)
    initial = {key: value.clone() for key, value in network.state_dict().items()}
    tags = transfer.apply(network, cfg)

    state = network.state_dict()
    differing = {key for key in state if key not in source or source[key].shape != state[key].shape}
    assert differing == {"classifier.1.weight", "classifier.1.bias"}
    for key, value in state.items():
        expected = initial[key] if key in differing else source[key]
        assert torch.equal(value, expected), key
    assert tags == {"transfer.init_from": run_id, "transfer.loaded": str(len(state) - 2)}


def test_a_transferred_and_frozen_run_trains_only_what_is_not_frozen(compose_config, tmp_path):
    run_id, source = pretrained(compose_config)
    cfg = compose_config(*CNN, f"model.init_from=latest:pretrain", "model.freeze=[features]",
                         "experiment_name=fine_tune")
    run(cfg, overrides=[])
    client, runs = all_runs(cfg.logger.tracking_uri)
    tuned = next(r for r in runs if client.get_experiment(r.info.experiment_id).name == "fine_tune")
    assert tuned.info.status == "FINISHED"
    assert tuned.data.tags["transfer.init_from"] == run_id  # latest:pretrain resolved to the run, and recorded
    assert tuned.data.tags["transfer.frozen"] == "6"  # three convolutions' weights and biases
    assert tuned.data.params["model.init_from"] == "latest:pretrain"
    weights = mlflow.pytorch.load_model(f"runs:/{tuned.info.run_id}/model").state_dict()
    for key in ("features.0.weight", "features.3.bias", "features.6.weight"):
        assert torch.equal(weights[key], source[key]), key  # frozen: exactly as pre-trained
    assert not torch.equal(weights["classifier.1.weight"], source["classifier.1.weight"])  # trained on


def test_init_from_a_checkpoint_file_takes_the_network_out_of_the_lightning_checkpoint(compose_config, tmp_path):
    cfg = compose_config(*CNN, "logger=none")
    run(cfg, overrides=[])
    checkpoint = tmp_path / "out" / "checkpoints" / "last.ckpt"
    saved = {key.removeprefix("model."): value
             for key, value in torch.load(checkpoint, weights_only=False)["state_dict"].items()}
    cfg = compose_config(*CNN, "logger=none", "seed=7", f"model.init_from={checkpoint}")
    network = build_network(cfg.model)
    transfer.apply(network, cfg)
    for key, value in network.state_dict().items():
        assert torch.equal(value, saved[key]), key


@pytest.mark.parametrize("overrides,message", [
    (["model.init_from=0123456789abcdef0123456789abcdef"],
     "model.init_from=0123456789abcdef0123456789abcdef: not a file and no MLflow run with that id"),
    (["model.init_from=latest:nothing_here"],
     "MLflow experiment 'nothing_here'"),
    (["model.init_from=/no/such.ckpt", "logger=none"],
     "model.init_from=/no/such.ckpt: no such file, and runs are found in MLflow, which logger=none does not use"),
    (["model.freeze=[feature]"], "model.freeze: 'feature' names no part of CNN; its parts are classifier, features"),
])
def test_transfer_mistakes_are_one_line_before_anything_trains(run_py, overrides, message):
    result = run_py(*CNN, *overrides)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_weights_of_another_architecture_are_refused(compose_config):
    run_id, _ = pretrained(compose_config, "model=mlp", "model.hidden=[16]")
    cfg = compose_config(*CNN, f"model.init_from={run_id}")
    with pytest.raises(ConfigError, match=f"model.init_from={run_id}: none of its 4 tensors matches this network"):
        transfer.apply(build_network(cfg.model), cfg)


def test_experiment_transfer_is_one_sweep_comparing_scratch_and_pretrained(run_py, tmp_path, tracking_uri):
    """The lab as a user runs it, on tiny generated files in the MNIST and Fashion-MNIST layouts."""
    write_mnist(tmp_path / "data" / "MNIST" / "raw")
    write_mnist(tmp_path / "data" / "FashionMNIST" / "raw")
    data = [f"data.root={tmp_path}/data", f"data.cache_dir={tmp_path}/cache", "data.download=false", "threads=1"]
    assert run_py("experiment=mnist_lenet", "trainer.max_epochs=1", *data).returncode == 0
    result = run_py("experiment=transfer", "trainer.max_epochs=2", "data.train_size=60", *data)
    assert result.returncode == 0, result.stderr

    client, runs = all_runs(tracking_uri)
    experiment = client.get_experiment_by_name("transfer").experiment_id
    in_sweep = [r for r in runs if r.info.experiment_id == experiment]
    parent = next(r for r in in_sweep if "pipeline.sweep" in r.data.tags)
    children = [r for r in in_sweep if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["model.init_from"] for r in children) == ["None", "latest:mnist_lenet"]
    assert all(r.info.status == "FINISHED" and "test/acc" in r.data.metrics for r in children)
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")
    assert "latest:mnist_lenet" in summary and "test/acc" in summary
