"""Every combination of the config groups composes, validates and builds; every data × model × optimizer ×
regularization combination runs one batch of train/val/test (fast_dev_run)."""
import itertools

import pytest
from hydra.utils import instantiate

from conftest import CONF
from pipeline.checks import check_config, check_model_fits_data
from pipeline.train import run


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


DATA, MODELS, OPTIMIZERS, REGULARIZATIONS, SCHEDULERS = (
    options(group) for group in ("data", "model", "optimizer", "regularization", "scheduler"))
TRAINERS, LOGGERS, CALLBACKS = options("trainer"), options("logger"), options("callbacks")


def test_groups_have_the_options_the_curriculum_needs():
    assert {"digits", "xor", "moons", "spirals"} <= set(DATA)
    assert {"linear", "mlp"} <= set(MODELS)
    assert {"sgd", "momentum", "rmsprop", "adam", "adamw"} <= set(OPTIMIZERS)
    assert {"none", "weight_decay", "dropout", "batchnorm"} <= set(REGULARIZATIONS)
    assert {"none", "step", "cosine"} <= set(SCHEDULERS)
    assert {"default", "debug"} <= set(TRAINERS)
    assert {"mlflow", "csv", "none"} <= set(LOGGERS)


def test_every_combination_composes_validates_and_builds(compose_config):
    built = 0
    for data, model, optimizer, regularization, scheduler in itertools.product(
            DATA, MODELS, OPTIMIZERS, REGULARIZATIONS, SCHEDULERS):
        cfg = compose_config(f"data={data}", f"model={model}", f"optimizer={optimizer}",
                             f"regularization={regularization}", f"scheduler={scheduler}")
        check_config(cfg)
        assert list(cfg.model.input_shape) == list(cfg.data.input_shape)
        assert cfg.optimizer.weight_decay == cfg.regularization.weight_decay
        network = instantiate(cfg.model)
        check_model_fits_data(network, cfg)
        built += 1
    assert built == len(DATA) * len(MODELS) * len(OPTIMIZERS) * len(REGULARIZATIONS) * len(SCHEDULERS)


@pytest.mark.parametrize("data,model,optimizer,regularization",
                         list(itertools.product(DATA, MODELS, OPTIMIZERS, REGULARIZATIONS)))
def test_combination_runs_fast_dev_run(compose_config, data, model, optimizer, regularization):
    # The scheduler cycles with the combination, so each scheduler runs with many of them.
    index = (DATA.index(data) + MODELS.index(model) + OPTIMIZERS.index(optimizer)
             + REGULARIZATIONS.index(regularization))
    cfg = compose_config(f"data={data}", f"model={model}", f"optimizer={optimizer}",
                         f"regularization={regularization}", f"scheduler={SCHEDULERS[index % len(SCHEDULERS)]}",
                         "trainer=debug", "logger=none", "callbacks=none", "+trainer.enable_progress_bar=false")
    metrics = run(cfg, overrides=[])
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["test/loss"] > 0


@pytest.mark.parametrize("trainer,logger,callbacks", list(itertools.product(TRAINERS, LOGGERS, CALLBACKS)))
def test_trainer_logger_callbacks_options_run(compose_config, tmp_path, trainer, logger, callbacks):
    cfg = compose_config(f"trainer={trainer}", f"logger={logger}", f"callbacks={callbacks}",
                         "trainer.max_epochs=1")
    metrics = run(cfg, overrides=[])
    assert "test/acc" in metrics
    if logger == "csv" and trainer != "debug":  # fast_dev_run suppresses logging
        assert list((tmp_path / "out" / "csv").rglob("metrics.csv"))
