"""Every option of every group composes with every other that it interacts with, validates and builds; every
compatible model × data × regularization combination, each optimizer and each scheduler runs one batch of
train/val/test (fast_dev_run). Incompatible model/data pairs fail with a clear error instead."""
import itertools

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from conftest import CONF
from pipeline.checks import check_config, check_model_fits_data
from pipeline.errors import ConfigError
from pipeline.train import run


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


DATA, MODELS, OPTIMIZERS, REGULARIZATIONS, SCHEDULERS = (
    options(group) for group in ("data", "model", "optimizer", "regularization", "scheduler"))
TRAINERS, LOGGERS, CALLBACKS = options("trainer"), options("logger"), options("callbacks")
OFFLINE_DATA = ["digits", "moons", "spirals", "xor"]  # no files needed; image sets are tested in test_images.py
IMAGE_DATA = {"digits", "mnist", "fashion_mnist", "cifar10"}
VECTOR_MODELS = {"linear", "mlp"}  # flatten any float input; the image models need (channels, height, width)
SEQUENCE_DATA, SEQUENCE_MODELS = {"chars"}, {"rnn", "lstm", "gru"}  # token ids; tested on files in test_chars.py


def compatible(data: str, model: str) -> bool:
    if data in SEQUENCE_DATA or model in SEQUENCE_MODELS:
        return data in SEQUENCE_DATA and model in SEQUENCE_MODELS
    return model in VECTOR_MODELS or data in IMAGE_DATA


def sizes(data: str) -> list[str]:
    """chars finds its classes in its folder; composing without the folder needs them stated."""
    return ["data.num_classes=18", "data.vocab_size=60"] if data in SEQUENCE_DATA else []


def test_groups_have_the_options_the_curriculum_needs():
    assert {"digits", "xor", "moons", "spirals", "mnist", "fashion_mnist", "cifar10"} <= set(DATA)
    assert {"linear", "mlp", "rnn", "lstm", "gru"} <= set(MODELS)
    assert "chars" in DATA
    assert {"sgd", "momentum", "rmsprop", "adam", "adamw"} <= set(OPTIMIZERS)
    assert {"none", "weight_decay", "dropout", "batchnorm"} <= set(REGULARIZATIONS)
    assert {"none", "step", "cosine"} <= set(SCHEDULERS)
    assert {"default", "debug"} <= set(TRAINERS)
    assert {"mlflow", "csv", "none"} <= set(LOGGERS)


def test_every_data_model_regularization_combination_composes_and_builds(compose_config):
    for data, model, regularization in itertools.product(DATA, MODELS, REGULARIZATIONS):
        cfg = compose_config(f"data={data}", f"model={model}", f"regularization={regularization}", *sizes(data))
        if model in SEQUENCE_MODELS and data not in SEQUENCE_DATA:  # caught at the config, before any model
            with pytest.raises(ConfigError, match=f"but data={data} declares no data.vocab_size"):
                check_config(cfg)
            continue
        check_config(cfg)
        assert list(cfg.model.input_shape) == list(cfg.data.input_shape)
        assert cfg.model.dropout == cfg.regularization.dropout
        if compatible(data, model):
            check_model_fits_data(instantiate(cfg.model), cfg)
        else:
            with pytest.raises((ConfigError, InstantiationException), match="input_shape|shape|token ids"):
                check_model_fits_data(instantiate(cfg.model), cfg)


def test_every_optimizer_regularization_scheduler_combination_composes(compose_config):
    for optimizer, regularization, scheduler in itertools.product(OPTIMIZERS, REGULARIZATIONS, SCHEDULERS):
        cfg = compose_config(f"optimizer={optimizer}", f"regularization={regularization}",
                             f"scheduler={scheduler}")
        check_config(cfg)
        assert cfg.optimizer.weight_decay == cfg.regularization.weight_decay
        instantiate(cfg.optimizer)(params=instantiate(cfg.model).parameters())


FAST = ["trainer=debug", "logger=none", "callbacks=none", "+trainer.enable_progress_bar=false"]
RUNS = ([(d, m, r, "adam", "none") for d, m, r in itertools.product(OFFLINE_DATA, MODELS, REGULARIZATIONS)
         if compatible(d, m)]
        + [("digits", "mlp", "weight_decay", o, s) for o, s in itertools.product(OPTIMIZERS, SCHEDULERS)])


@pytest.mark.parametrize("data,model,regularization,optimizer,scheduler", RUNS)
def test_combination_runs_fast_dev_run(compose_config, data, model, regularization, optimizer, scheduler):
    cfg = compose_config(f"data={data}", f"model={model}", f"regularization={regularization}",
                         f"optimizer={optimizer}", f"scheduler={scheduler}", *FAST)
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
