"""The labs' optimizers written from scratch follow torch.optim's parameter trajectory step for step, also when a
learning-rate scheduler drives them, survive a state_dict save/load, compose from their YAMLs exactly like the
torch options they mirror, and refuse bad values."""
import copy
import functools
import io

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from conftest import CONF
from pipeline.scratch.adam import Adam
from pipeline.scratch.rmsprop import RMSprop
from pipeline.scratch.sgd import SGD
from pipeline.scratch.trajectory import STEPS, copies, error, fixed_problem, take_step

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: more threads only make each step slower on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scheduled_values(optimizer) -> list[dict]:
    """What a scheduler rewrites: each group's lr and momentum or betas."""
    return [{key: group[key] for key in ("lr", "momentum", "betas") if key in group}
            for group in optimizer.param_groups]


def follow(make_reference, make_scratch, dtype, make_schedule=None):
    """Run torch's optimizer and ours side by side from the same start for STEPS steps (each with the schedule
    make_schedule builds, if any) and return the largest error of any parameter after any step."""
    start, loss_of = fixed_problem(dtype)
    reference_params, scratch_params = copies(start), copies(start)
    reference, scratch = make_reference(reference_params), make_scratch(scratch_params)
    schedules = [make_schedule(each) for each in (reference, scratch)] if make_schedule else []
    schedules = [schedule for schedule in schedules if schedule is not None]
    errors = []
    for _ in range(STEPS):
        reference_loss = take_step(reference, reference_params, loss_of)
        scratch_loss = take_step(scratch, scratch_params, loss_of)
        assert scratch_loss.item() == pytest.approx(reference_loss.item(), rel=1e-4)  # step returns the loss
        for schedule in schedules:
            schedule.step()
        assert scheduled_values(scratch) == scheduled_values(reference)
        errors += [error(ours.detach(), theirs.detach()) for ours, theirs in zip(scratch_params, reference_params)]
    assert max(error(moved.detach(), first) for moved, first in zip(scratch_params, start)) > 1e-3  # it did train
    assert torch.equal(scratch_params[-1].detach(), start[-1])  # no gradient: untouched
    return torch.stack(errors).max().item()


CASES = {
    "sgd": (torch.optim.SGD, SGD, dict(lr=0.1)),
    "sgd-momentum": (torch.optim.SGD, SGD, dict(lr=0.1, momentum=0.9)),
    "sgd-momentum-dampening": (torch.optim.SGD, SGD, dict(lr=0.1, momentum=0.9, dampening=0.5)),
    "sgd-nesterov": (torch.optim.SGD, SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "sgd-weight-decay": (torch.optim.SGD, SGD, dict(lr=0.1, weight_decay=0.01)),
    "rmsprop": (torch.optim.RMSprop, RMSprop, dict(lr=0.01)),
    "rmsprop-centered": (torch.optim.RMSprop, RMSprop, dict(lr=0.01, centered=True)),
    "rmsprop-momentum": (torch.optim.RMSprop, RMSprop, dict(lr=0.01, momentum=0.9)),
    "rmsprop-weight-decay": (torch.optim.RMSprop, RMSprop, dict(lr=0.01, weight_decay=0.01)),
    "rmsprop-all": (torch.optim.RMSprop, RMSprop, dict(lr=0.01, alpha=0.9, momentum=0.5, centered=True,
                                                       weight_decay=0.01)),
    "adam": (torch.optim.Adam, Adam, dict(lr=0.01)),
    "adam-weight-decay": (torch.optim.Adam, Adam, dict(lr=0.01, weight_decay=0.01)),
    "adam-amsgrad": (torch.optim.Adam, Adam, dict(lr=0.01, amsgrad=True)),
    "adam-betas-eps": (torch.optim.Adam, Adam, dict(lr=0.01, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01,
                                                    amsgrad=True)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("case", CASES)
def test_follows_torch_trajectory(case, dtype):
    torch_class, scratch_class, hyperparameters = CASES[case]
    worst = follow(lambda params: torch_class(params, **hyperparameters),
                   lambda params: scratch_class(params, **hyperparameters), dtype)
    assert worst < TOLERANCE[dtype]


@pytest.mark.parametrize("torch_class,scratch_class", [(torch.optim.SGD, SGD), (torch.optim.RMSprop, RMSprop),
                                                       (torch.optim.Adam, Adam)], ids=["sgd", "rmsprop", "adam"])
def test_defaults_are_torchs(torch_class, scratch_class):
    ours = scratch_class([torch.zeros(2, requires_grad=True)]).defaults
    assert ours == {key: torch_class([torch.zeros(2, requires_grad=True)]).defaults[key] for key in ours}


@functools.cache
def composed(option: str):
    """The real conf/ composed with optimizer=option and weight decay on."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=[f"optimizer={option}", "regularization=weight_decay"])


def with_scheduler(cfg, scheduler: str):
    """cfg with scheduler=<scheduler> put in as Hydra puts a group's option (composing each pair costs a second)."""
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.scheduler = OmegaConf.load(CONF / "scheduler" / f"{scheduler}.yaml")
    return cfg


def build_schedule(cfg, optimizer):
    """The scheduler the way the pipeline builds it (tasks/base.py): OneCycleLR is told the run's step count."""
    if not cfg.scheduler:
        return None
    partial = instantiate(cfg.scheduler)
    return partial(optimizer, total_steps=STEPS) if partial.func is torch.optim.lr_scheduler.OneCycleLR \
        else partial(optimizer)


OPTIONS = {"scratch_sgd": ("sgd", SGD), "scratch_momentum": ("momentum", SGD),
           "scratch_rmsprop": ("rmsprop", RMSprop), "scratch_adam": ("adam", Adam)}
TORCH_ONLY_ARGUMENTS = {"foreach", "maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay"}


@pytest.mark.parametrize("option", OPTIONS)
def test_yaml_builds_what_the_torch_option_builds(option):
    torch_option, scratch_class = OPTIONS[option]
    ours, theirs = (OmegaConf.to_container(OmegaConf.load(CONF / "optimizer" / f"{name}.yaml"))
                    for name in (option, torch_option))
    assert {**ours, "_target_": None} == {**theirs, "_target_": None}  # the same keys and values but the class
    assert (CONF / "optimizer" / f"{option}.yaml").read_text().startswith("# ")

    params = [torch.zeros(3, requires_grad=True)]
    built = instantiate(composed(option).optimizer)(params)
    reference = instantiate(composed(torch_option).optimizer)(params=params)
    assert type(built) is scratch_class
    (group,), (reference_group,) = built.param_groups, reference.param_groups
    assert group["weight_decay"] == 0.0005  # ${regularization.weight_decay} reaches it
    assert {key: value for key, value in group.items() if key != "params"} == \
        {key: value for key, value in reference_group.items() if key not in TORCH_ONLY_ARGUMENTS | {"params"}}


@pytest.mark.parametrize("scheduler", ["none", "step", "cosine", "onecycle"])
@pytest.mark.parametrize("option", OPTIONS)
def test_every_scheduler_option_drives_it_as_it_drives_torchs(option, scheduler):
    """OneCycleLR cycles `momentum` (SGD, RMSprop: it turns momentum on even where the option has none) or
    beta1 (Adam); every schedule must leave the same hyperparameters and parameters as on torch's optimizer."""
    torch_option, _ = OPTIONS[option]
    scratch_cfg = with_scheduler(composed(option), scheduler)
    torch_cfg = with_scheduler(composed(torch_option), scheduler)
    worst = follow(instantiate(torch_cfg.optimizer), instantiate(scratch_cfg.optimizer), torch.float64,
                   lambda optimizer: build_schedule(scratch_cfg, optimizer))
    assert worst < TOLERANCE[torch.float64]


@pytest.mark.parametrize("make", [lambda params: SGD(params, lr=0.1, momentum=0.9, dampening=0.3),
                                  lambda params: RMSprop(params, lr=0.01, momentum=0.5, centered=True),
                                  lambda params: Adam(params, lr=0.01, weight_decay=0.01, amsgrad=True)],
                         ids=["sgd-momentum", "rmsprop-centered-momentum", "adam-amsgrad"])
def test_state_dict_round_trip_continues_the_same_trajectory(make):
    """Save after 30 steps as a checkpoint does, load into a new optimizer built with the class defaults (the
    saved hyperparameters must win) and go on: identical to never stopping. A new optimizer that loads nothing
    goes elsewhere, so the state is what carries it."""
    start, loss_of = fixed_problem(torch.float64)
    params = copies(start)
    optimizer = make(params)
    for _ in range(30):
        take_step(optimizer, params, loss_of)
    checkpoint = io.BytesIO()
    torch.save(optimizer.state_dict(), checkpoint)
    checkpoint.seek(0)

    resumed_params, fresh_params = copies(p.detach() for p in params), copies(p.detach() for p in params)
    resumed, fresh = type(optimizer)(resumed_params), make(fresh_params)
    resumed.load_state_dict(torch.load(checkpoint, weights_only=True))
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for _ in range(30):
        for each, its_params in ((optimizer, params), (resumed, resumed_params), (fresh, fresh_params)):
            take_step(each, its_params, loss_of)
    assert all(torch.equal(a, b) for a, b in zip(params, resumed_params))
    assert not all(torch.equal(a, b) for a, b in zip(params, fresh_params))


@pytest.mark.parametrize("make,message", [
    (lambda p: SGD(p, lr=-0.1), "lr=-0.1"),
    (lambda p: SGD(p, lr=float("nan")), "lr=nan"),
    (lambda p: SGD(p, momentum=-0.5), "momentum=-0.5"),
    (lambda p: SGD(p, weight_decay=-1), "weight_decay=-1"),
    (lambda p: SGD(p, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0"),
    (lambda p: RMSprop(p, lr=-1), "lr=-1"),
    (lambda p: RMSprop(p, alpha=-0.1), "alpha=-0.1"),
    (lambda p: RMSprop(p, eps=-1e-8), "eps=-1e-08"),
    (lambda p: RMSprop(p, momentum=-0.9), "momentum=-0.9"),
    (lambda p: Adam(p, lr=-0.001), "lr=-0.001"),
    (lambda p: Adam(p, betas=(1.0, 0.999)), r"betas=\[1.0, 0.999\] is invalid: must be two numbers in \[0, 1\)"),
    (lambda p: Adam(p, betas=(0.9, -0.1)), r"betas=\[0.9, -0.1\]"),
    (lambda p: Adam(p, betas=(0.9,)), r"betas=\[0.9\]"),
    (lambda p: Adam(p, eps=-1.0), "eps=-1.0"),
    (lambda p: Adam(p, weight_decay=-0.1), "weight_decay=-0.1"),
])
def test_bad_values_are_refused_naming_the_key(make, message):
    with pytest.raises(ValueError, match=message):
        make([torch.zeros(2, requires_grad=True)])


@pytest.mark.parametrize("make", [lambda p: SGD(p, foreach=True), lambda p: RMSprop(p, maximize=True),
                                  lambda p: Adam(p, fused=True), lambda p: Adam(p, decoupled_weight_decay=True)],
                         ids=["sgd-foreach", "rmsprop-maximize", "adam-fused", "adam-decoupled"])
def test_torch_only_arguments_are_not_accepted(make):
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        make([torch.zeros(2, requires_grad=True)])
