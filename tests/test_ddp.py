"""Data-parallel training on this machine's CPU: trainer=ddp_cpu starts a second process (Lightning DDP, gloo on
loopback), each trains on its share of the batches, metrics are summed over both, one MLflow run records it."""
import math

import pytest
import torch
from hydra.utils import instantiate

from conftest import all_runs
from pipeline.data.batches import TensorBatches
from pipeline.models.building import build_network
from pipeline.train import run

EPOCHS = 10
TOLERANCE = 0.03  # test accuracy of the 2-process run against the 1-process run (README: Training on several processes)


@pytest.mark.parametrize("pad", [True, False])
def test_the_processes_share_out_every_epochs_order_as_a_distributed_sampler_would(pad):
    x = torch.arange(11)
    shards = [list(TensorBatches(x, x, 4, torch.Generator().manual_seed(3), rank, 3, pad)) for rank in range(3)]
    seen = [torch.cat([batch for batch, _ in shard]).tolist() for shard in shards]
    if pad:  # training: the same number of steps everywhere, one example seen twice to make up 12
        assert [len(shard) for shard in shards] == [1, 1, 1] and [len(part) for part in seen] == [4, 4, 4]
        assert set(sum(seen, [])) == set(range(11))
    else:  # evaluation: every example exactly once
        assert sorted(sum(seen, [])) == list(range(11))
    whole = torch.cat([batch for batch, _ in TensorBatches(x, x, 4, torch.Generator().manual_seed(3))]).tolist()
    assert sum(seen, []) != whole and sorted(set(sum(seen, []))) == sorted(whole)


def accuracy_of_checkpoint(cfg, path, split: str) -> float:
    """A checkpoint's accuracy on a whole split, computed here in one process."""
    checkpoint = torch.load(path, weights_only=False)
    network = build_network(cfg.model)
    network.load_state_dict({key.removeprefix("model."): value for key, value in checkpoint["state_dict"].items()
                             if key.startswith("model.")})
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    x, y = datamodule.splits[split]
    with torch.no_grad():
        return (network.eval()(x).argmax(1) == y).float().mean().item()


def test_ddp_cpu_trains_on_shards_reduces_metrics_and_tracks_one_run(run_py, compose_config, tracking_uri, tmp_path):
    trained = run_py("trainer=ddp_cpu", f"trainer.max_epochs={EPOCHS}", timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Starting with 2 processes" in trained.stderr + trained.stdout

    client, runs = all_runs(tracking_uri)
    assert len(runs) == 1  # the second process opened no run
    tracked = runs[0]
    assert tracked.info.status == "FINISHED"
    assert len(client.get_metric_history(tracked.info.run_id, "val/acc")) == EPOCHS
    assert {item.path for item in client.list_artifacts(tracked.info.run_id, "plots")} >= {"plots/confusion_matrix.png"}

    cfg = compose_config("trainer=ddp_cpu")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    train_examples = len(datamodule.splits["train"][1])
    checkpoints = tmp_path / "run" / "checkpoints"
    # Each process stepped through half the training set per epoch (the whole set would take twice the steps).
    steps_per_epoch = math.ceil(math.ceil(train_examples / 2) / cfg.data.batch_size)
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == EPOCHS * steps_per_epoch
    # The logged metrics are over the whole split (summed over both processes), not one process's half.
    assert tracked.data.metrics["val/acc_best"] == pytest.approx(accuracy_of_checkpoint(cfg, checkpoints / "best.ckpt",
                                                                                        "val"), abs=1e-6)
    assert tracked.data.metrics["test/acc"] == pytest.approx(accuracy_of_checkpoint(cfg, checkpoints / "best.ckpt",
                                                                                    "test"), abs=1e-6)

    alone = run(compose_config(f"trainer.max_epochs={EPOCHS}"), overrides=[])
    assert abs(tracked.data.metrics["test/acc"] - alone["test/acc"]) <= TOLERANCE


def test_lightnings_ddp_under_a_sweep_is_refused_before_anything_runs(run_py, tracking_uri):
    refused = run_py("-m", "trainer=ddp_cpu", "seed=1,2")
    assert refused.returncode == 2
    assert "trainer.strategy=ddp under -m" in refused.stderr and "ddp_spawn" in refused.stderr
    assert "nothing was run" in refused.stderr and "Traceback" not in refused.stderr
    assert not all_runs(tracking_uri)[1]


def test_data_that_is_not_split_across_processes_is_refused(compose_config):
    from pipeline.errors import ConfigError
    from pipeline.train import start

    with pytest.raises(ConfigError, match="trainer.devices=2 with data=text: its batches are not split"):
        start(compose_config("trainer=ddp_cpu", "task=embed", "model=word2vec", "data=text"))
