"""Every option of every group composes with every other that it interacts with, validates, builds what the
option says, and trains: every compatible model × data × regularization combination and each optimizer with
each scheduler learns its data above chance in a short run. Incompatible model/data pairs fail with a clear
error instead."""
import itertools

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from conftest import CONF, all_runs
from pipeline.checks import check_config, check_model_fits_data
from pipeline.errors import ConfigError
from pipeline.train import run
from pipeline.models.building import build_network
from pipeline.muon import Muon


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


DATA, ALL_MODELS, OPTIMIZERS, REGULARIZATIONS, SCHEDULERS = (
    options(group) for group in ("data", "model", "optimizer", "regularization", "scheduler"))
# The labs' own optimizers (scratch_sgd, ...) mirror these options key for key: test_scratch_optimizers.py builds them
# with every scheduler and follows torch's trajectories; test_scratch.py trains with one through run.py.
OPTIMIZERS = [optimizer for optimizer in OPTIMIZERS if not optimizer.startswith("scratch_")]
# The models task=classify trains (they output class scores); every task × model × data is in test_tasks.py.
OTHER_TASKS_MODELS = {"conv_autoencoder", "linear_autoencoder", "vae", "conv_vae", "word2vec", "policy_mlp", "dcgan"}
MODELS = [model for model in ALL_MODELS if model not in OTHER_TASKS_MODELS]
# One-process trainers and local loggers: trainer=ddp_cpu starts processes (tests/test_ddp.py), gpu and ddp_gpu need
# a GPU, logger=mlflow_server a server (tests/test_server.py).
ELSEWHERE = {"ddp_cpu", "gpu", "ddp_gpu", "mlflow_server"}
TRAINERS, LOGGERS, CALLBACKS = ([option for option in options(group) if option not in ELSEWHERE]
                                for group in ("trainer", "logger", "callbacks"))
OFFLINE_DATA = ["digits", "moons", "spirals", "xor"]  # no files needed; image sets are tested in test_images.py
IMAGE_DATA = {"digits", "mnist", "fashion_mnist", "cifar10"}
VECTOR_MODELS = {"linear", "mlp"}  # flatten any float input; the image models need (channels, height, width)
LARGE_IMAGE_MODELS = {"whitened_cnn"}  # three pools after a 2x2 conv: images of at least 9x9, not the 8x8 digits
SEQUENCE_DATA, SEQUENCE_MODELS = {"chars"}, {"rnn", "lstm", "gru"}  # token ids; tested on files in test_chars.py
WORD_DATA = {"text"}  # a stream of words for word2vec (task=embed); no classifier reads it; tested in test_text.py
ENVIRONMENT_DATA = {"cartpole", "acrobot"}  # gymnasium environments for task=dqn, reinforce; in test_rl.py


def compatible(data: str, model: str) -> bool:
    if data in SEQUENCE_DATA or model in SEQUENCE_MODELS:
        return data in SEQUENCE_DATA and model in SEQUENCE_MODELS
    if model in LARGE_IMAGE_MODELS:
        return data in IMAGE_DATA - {"digits"}
    return model in VECTOR_MODELS or data in IMAGE_DATA


def sizes(data: str) -> list[str]:
    """chars finds its classes in its folder; composing without the folder needs them stated."""
    return ["data.num_classes=18", "data.vocab_size=60"] if data in SEQUENCE_DATA else []


def test_groups_have_the_options_the_curriculum_needs():
    assert {"digits", "xor", "moons", "spirals", "mnist", "fashion_mnist", "cifar10"} <= set(DATA)
    assert {"linear", "mlp", "rnn", "lstm", "gru"} <= set(MODELS)
    assert OTHER_TASKS_MODELS <= set(ALL_MODELS)
    assert set(options("task")) == {"classify", "reconstruct", "vae", "embed", "gan", "dqn", "reinforce"}
    assert "chars" in DATA
    assert {"sgd", "momentum", "rmsprop", "adam", "adamw"} <= set(OPTIMIZERS)
    assert {"none", "weight_decay", "dropout", "batchnorm"} <= set(REGULARIZATIONS)
    assert {"none", "step", "cosine"} <= set(SCHEDULERS)
    assert {"default", "debug"} <= set(TRAINERS)
    assert {"mlflow", "csv", "none"} <= set(LOGGERS)
    assert set(options("modules")) == {"torch", "scratch"}
    assert {"scratch_sgd", "scratch_momentum", "scratch_rmsprop", "scratch_adam"} <= set(options("optimizer"))


def option_values(group: str, option: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"))


@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("data", DATA)
def test_data_model_regularization_composes_and_builds(compose_config, data, model, regularization):
    cfg = compose_config(f"data={data}", f"model={model}", f"regularization={regularization}", *sizes(data))
    if data in WORD_DATA | ENVIRONMENT_DATA:  # refused at the config: the model reads sizes they do not declare
        with pytest.raises(ConfigError, match=f"but data={data} declares no data\\."):
            check_config(cfg)
        return
    if model in SEQUENCE_MODELS and data not in SEQUENCE_DATA:  # caught at the config, before any model
        with pytest.raises(ConfigError, match=f"but data={data} declares no data.vocab_size"):
            check_config(cfg)
        return
    check_config(cfg)
    assert cfg.regularization == option_values("regularization", regularization)  # the option wins over recipes
    assert list(cfg.model.input_shape) == list(cfg.data.input_shape)
    if not compatible(data, model):
        with pytest.raises((ConfigError, InstantiationException), match="input_shape|shape|token ids"):
            check_model_fits_data(build_network(cfg.model), cfg)
        return
    built = build_network(cfg.model)
    check_model_fits_data(built, cfg)
    dropout, batchnorm = cfg.regularization.dropout, cfg.regularization.batchnorm
    assert {m.p for m in built.modules() if isinstance(m, nn.Dropout)} == ({dropout} if dropout else set())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in built.modules()) == batchnorm


OPTIMIZER_CLASSES = {"sgd": torch.optim.SGD, "momentum": torch.optim.SGD, "adam": torch.optim.Adam,
                     "adamw": torch.optim.AdamW, "rmsprop": torch.optim.RMSprop, "muon": Muon}
SCHEDULER_CLASSES = {"none": type(None), "step": torch.optim.lr_scheduler.StepLR,
                     "cosine": torch.optim.lr_scheduler.CosineAnnealingLR,
                     "onecycle": torch.optim.lr_scheduler.OneCycleLR}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("regularization", REGULARIZATIONS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_regularization_scheduler_builds_what_the_options_say(compose_config, optimizer, regularization,
                                                                        scheduler):
    cfg = compose_config(f"optimizer={optimizer}", f"regularization={regularization}", f"scheduler={scheduler}")
    check_config(cfg)
    built = instantiate(cfg.optimizer)(params=build_network(cfg.model).parameters())
    assert type(built) is OPTIMIZER_CLASSES[optimizer]
    (group,) = built.param_groups
    assert group["weight_decay"] == option_values("regularization", regularization)["weight_decay"]
    assert group["lr"] == option_values("optimizer", optimizer)["lr"]
    if optimizer in ("sgd", "momentum"):
        assert group["momentum"] == (0.9 if optimizer == "momentum" else 0)
    schedule = None
    if cfg.get("scheduler"):
        partial = instantiate(cfg.scheduler)
        schedule = partial(built, total_steps=100) if scheduler == "onecycle" else partial(built)
    assert type(schedule) is SCHEDULER_CLASSES[scheduler]


# One thread per run: the suite runs two at a time on two cores, where more threads make training many times slower.
QUIET = ["logger=none", "callbacks=none", "+trainer.enable_progress_bar=false", "threads=1"]
# A short run per data set: digits 2 epochs of 32-image batches, the 2-D toy sets 5 epochs at a higher rate.
SHORT = {"digits": ["trainer.max_epochs=2", "data.batch_size=32"],
         **{toy: ["trainer.max_epochs=5", "optimizer.lr=0.01"] for toy in ("moons", "spirals", "xor")}}


def expected_accuracy(data: str, model: str) -> tuple[float, float]:
    """The test accuracy a short run reaches, (at least, at most); chance is 0.1 on digits, 1/2 on moons and xor,
    1/3 on spirals. Every model learns digits; the MLP learns every toy set; a linear model only what a line can
    separate: moons nearly, the spirals partly, xor not at all."""
    if data == "digits":
        return 0.3, 1.0
    if model == "mlp":
        return 0.9, 1.0
    return {"moons": (0.8, 1.0), "spirals": (0.4, 0.7), "xor": (0.0, 0.6)}[data]


RUNS = ([(d, m, r, "adam", "none") for d, m, r in itertools.product(OFFLINE_DATA, MODELS, REGULARIZATIONS)
         if compatible(d, m)]
        + [("digits", "mlp", "weight_decay", o, s) for o, s in itertools.product(OPTIMIZERS, SCHEDULERS)])


@pytest.mark.parametrize("data,model,regularization,optimizer,scheduler", RUNS)
def test_combination_learns_in_a_short_run(compose_config, data, model, regularization, optimizer, scheduler):
    cfg = compose_config(f"data={data}", f"model={model}", f"regularization={regularization}",
                         f"optimizer={optimizer}", f"scheduler={scheduler}", *QUIET, *SHORT[data])
    metrics = run(cfg, overrides=[])
    low, high = expected_accuracy(data, model)
    assert low <= metrics["test/acc"] <= high, metrics


@pytest.mark.parametrize("trainer,logger,callbacks", list(itertools.product(TRAINERS, LOGGERS, CALLBACKS)))
def test_trainer_logger_callbacks_options_do_what_they_say(compose_config, tmp_path, tracking_uri, trainer, logger,
                                                           callbacks):
    cfg = compose_config(f"trainer={trainer}", f"logger={logger}", f"callbacks={callbacks}",
                         "trainer.max_epochs=1", "threads=1")
    metrics = run(cfg, overrides=[])
    whole_epoch = trainer != "debug"  # debug is fast_dev_run: one batch per stage, no logs, no checkpoints
    if whole_epoch:
        assert metrics["test/acc"] > 0.5  # one epoch of the MLP on digits; chance is 0.1
    _, runs = all_runs(tracking_uri)
    if logger == "mlflow":
        (tracked,) = runs
        assert tracked.info.status == "FINISHED"
        if whole_epoch:
            assert tracked.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    else:
        assert not runs
    assert bool(list((tmp_path / "out").rglob("metrics.csv"))) == (logger == "csv" and whole_epoch)
    assert (tmp_path / "out" / "checkpoints" / "best.ckpt").exists() == (callbacks == "default" and whole_epoch)
