"""Config validation at the boundary: a bad value is one clear line naming the key, the value and what is allowed."""
import math

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError

from pipeline.data.in_memory import CLASS_WEIGHTINGS
from pipeline.errors import ConfigError, first_line
from pipeline.models.activations import ACTIVATIONS
from pipeline.models.recurrent import CELLS


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


RULES = [
    # (key, accepts(value), what is allowed)
    ("seed", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("resume", lambda v: v is None or (isinstance(v, str) and v.strip() != ""), "null, auto or an MLflow run id"),
    ("trial", lambda v: v is None or (_integer(v) and v >= 0), "null (set by a search) or an integer >= 0"),
    ("threads", lambda v: v is None or (_integer(v) and v >= 1), "null or an integer >= 1"),
    ("fused_steps", lambda v: v == "auto" or (_integer(v) and v >= 1), "auto or an integer >= 1"),
    ("data.batch_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.num_classes", lambda v: v is None or (_integer(v) and v >= 2),
     "an integer >= 2 (or null where the data finds its classes, as data=chars does)"),
    ("data.max_length", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("data.alphabet", lambda v: isinstance(v, str) and v and len(set(v)) == len(v),
     "a non-empty string of distinct characters"),
    ("model.hidden_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("model.num_layers", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("model.embedding_dim", lambda v: v is None or (_integer(v) and v >= 1), "null (one-hot) or an integer >= 1"),
    ("model.cell", lambda v: v in CELLS, "one of " + ", ".join(CELLS)),
    ("data.class_weighting", lambda v: v in CLASS_WEIGHTINGS, "one of " + ", ".join(CLASS_WEIGHTINGS)),
    ("trainer.gradient_clip_val", lambda v: v is None or (_number(v) and v > 0), "null (off) or a number > 0"),
    ("data.input_shape", lambda v: isinstance(v, list) and v and all(_integer(d) and d >= 1 for d in v),
     "a non-empty list of integers >= 1"),
    ("data.train_size", lambda v: v is None or (_integer(v) and v >= 2),
     "null (every training example) or an integer >= 2 (a stratified subset of the training split)"),
    ("data.classes", lambda v: v is None or (isinstance(v, list) and len(v) >= 2 and all(_integer(c) and c >= 0
                                                                                  for c in v)),
     "null (every class) or a list of at least two class indices, e.g. [5, 6, 7, 8, 9]"),
    ("data.val_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("data.test_fraction", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    ("data.num_samples", lambda v: _integer(v) and v >= 20, "an integer >= 20"),
    ("data.noise", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("model.hidden", lambda v: isinstance(v, list) and all(_integer(w) and w >= 1 for w in v),
     "a list of layer widths, each an integer >= 1 (e.g. [256, 128])"),
    ("model.activation", lambda v: v in ACTIVATIONS, "one of " + ", ".join(ACTIVATIONS)),
    ("regularization.dropout", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("regularization.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("regularization.batchnorm", lambda v: isinstance(v, bool), "true or false"),
    ("optimizer.lr", lambda v: _number(v) and v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0"),
    ("optimizer.momentum", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.alpha", lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("optimizer.betas", lambda v: isinstance(v, list) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
     "two numbers in [0, 1), e.g. [0.9, 0.999]"),
    ("scheduler.step_size", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("scheduler.gamma", lambda v: _number(v) and v > 0, "a number > 0"),
    ("scheduler.T_max", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("trainer.max_epochs", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("viz.explain_images", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("viz.explain_steps", lambda v: _integer(v) and v >= 2, "an integer >= 2"),
    ("task.mode", lambda v: v in ("max", "min"), "max or min"),
    ("task.monitor", lambda v: isinstance(v, str) and v.startswith("val/"), "a validation metric, e.g. val/acc"),
]

_ABSENT = object()


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


# What kind of data a model needs when it reads a data key that the chosen data does not declare.
NEEDS = {"data.vocab_size": "this model reads token ids, such as data=chars (names) or data=text (words)",
         "data.input_shape": "this model reads fixed-size inputs (images or feature vectors), not a word stream",
         "data.num_classes": "it needs labelled data, which data=text (a word stream for task=embed) and "
                             "environments (data=cartpole, acrobot: use model=policy_mlp) are not",
         "data.num_actions": "it acts in an environment, such as data=cartpole or acrobot (task=dqn, reinforce)"}


def check_reads_declared_data(cfg: DictConfig) -> None:
    """A model or task key interpolating a data key the chosen data lacks (model=lstm reads data.vocab_size, which
    image data has not) fails with both names, not with OmegaConf's bare 'Interpolation key not found'."""
    for section in ("model", "task"):
        raw = OmegaConf.to_container(cfg[section], resolve=False) if section in cfg else {}
        for key, value in raw.items():
            try:
                OmegaConf.select(cfg[section], key, throw_on_resolution_failure=True)
            except InterpolationKeyError:
                wanted = str(value).removeprefix("${").removesuffix("}")
                raise ConfigError(f"{section}.{key}={value} but data={cfg.data.name} declares no {wanted}: "
                                  f"{NEEDS.get(wanted, 'choose a data option that declares it')}") from None


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key whose value is outside what the pipeline accepts."""
    check_reads_declared_data(cfg)
    fractions = 0.0
    for key, accepts, allowed in RULES:
        value = _plain(OmegaConf.select(cfg, key, default=_ABSENT))
        if value is _ABSENT:
            continue
        if not accepts(value):
            raise ConfigError(f"{key}={value!r} is invalid: must be {allowed}")
        if key in ("data.val_fraction", "data.test_fraction"):
            fractions += value
    if fractions >= 1:
        raise ConfigError(f"data.val_fraction + data.test_fraction = {fractions:g} leaves no training data: "
                          "their sum must be < 1")
    if "task" in cfg and "data" in cfg:
        check_data_fits_task(cfg)


def probe_input(cfg: DictConfig) -> torch.Tensor:
    """Two stand-in samples of the data's shape: token ids (id 2, the first letter) for data with a vocabulary,
    zeros otherwise."""
    shape = tuple(cfg.data.get("input_shape") or ())
    if "vocab_size" in cfg.data:
        return torch.full((2, *shape), 2, dtype=torch.long)
    return torch.zeros(2, *shape)


def model_name(cfg: DictConfig) -> str:
    """The model's class name, as messages name it (MLP, ConvAutoencoder)."""
    return cfg.model._target_.rsplit(".", 1)[-1]


def task_class(cfg: DictConfig):
    """The class conf/task names (Classifier, Reconstruction, ...): it says what data and models it takes."""
    from pipeline.imports import import_object

    found = import_object(cfg.task._target_, "task._target_")
    if not isinstance(found, type):
        raise ConfigError(f"task._target_={cfg.task._target_!r} is not a class (a task is a LightningModule class)")
    return found


def check_data_fits_task(cfg: DictConfig) -> None:
    """A loss the task does not know, or data without what the task learns from (classes, images, word windows),
    is refused before loading."""
    task = task_class(cfg)
    losses = getattr(task, "losses", None)
    if losses and cfg.task.get("loss") not in losses:
        raise ConfigError(f"task.loss={cfg.task.get('loss')!r} is invalid for task={task.name}: must be one of "
                          + ", ".join(losses))
    task.check_best(cfg.task.get("monitor"), cfg.task.get("mode"))
    task.check_data(cfg)


def check_model_fits_data(model: torch.nn.Module, cfg: DictConfig, example: torch.Tensor | None = None) -> None:
    """Run one tiny forward pass (on `example`, two real samples, when given) so an incompatible model, data and
    task fail before training, not inside it."""
    inputs = probe_input(cfg) if example is None else example[:2]
    name = model_name(cfg)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                model(inputs)
            except Exception as error:  # the library's message says why; we say which pair and shape
                raise ConfigError(f"model {name} ({cfg.model._target_}) cannot take data={cfg.data.name} inputs "
                                  f"of shape {list(inputs.shape[1:])}: {first_line(error)}") from None
            task_class(cfg).check_model(model, inputs, cfg)
    finally:
        model.train(was_training)


def check_job(cfg: DictConfig) -> None:
    """All of a run's checks that need no data loaded: the values, and one forward pass of the model on
    stand-in inputs of the data's declared shape (where the data declares its sizes; chars finds them on loading)."""
    check_config(cfg)
    if "trainer" in cfg and "data" in cfg:
        from pipeline import distributed

        distributed.check(cfg, multirun=True)  # only sweeps check their jobs ahead
    sizes = [OmegaConf.select(cfg, key, default=_ABSENT) for key in ("data.num_classes", "data.vocab_size")]
    if "model" in cfg and None not in sizes:
        from pipeline.models.building import build_network, module_layers

        check_model_fits_data(build_network(cfg.model, module_layers(cfg)), cfg)
    if "model" in cfg and cfg.model.get("init_from"):
        from pipeline import transfer

        transfer.origin(str(cfg.model.init_from), transfer.tracking_uri(cfg))
