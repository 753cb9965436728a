"""The image models: each builds for MNIST, CIFAR-10 and 8x8 digits images, has gradients everywhere, learns a
batch, answers deterministically in eval mode, rejects bad keys with a clear error, and builds from its config."""
import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from pipeline.models.cnn import CNN
from pipeline.models.lenet import LeNet
from pipeline.models.resnet import ResNet
from pipeline.models.vgg import VGG
from pipeline.models.building import PIPELINE_KEYS, build_network

CONF = Path(__file__).parents[1] / "conf"
MODELS = {"lenet": LeNet, "vgg": VGG, "resnet": ResNet, "cnn": CNN}
SHAPES = {"mnist": [1, 28, 28], "cifar10": [3, 32, 32], "digits": [1, 8, 8]}
REGULARIZATIONS = {"plain": dict(batchnorm=False, dropout=0.0), "batchnorm_dropout": dict(batchnorm=True, dropout=0.3)}
CASES = [(model, shape, regularization) for model in MODELS for shape in SHAPES for regularization in REGULARIZATIONS]
SHARED_KEYS = ("_target_", "input_shape", "num_classes", "activation", "dropout", "batchnorm")


def build(model: str, input_shape, batchnorm=False, dropout=0.0, **keys) -> torch.nn.Module:
    """The model with its own keys (channels, blocks, ...) as conf/model/<model>.yaml sets them, unless given."""
    config = OmegaConf.load(CONF / "model" / f"{model}.yaml")
    own = {key: config[key] for key in config if key not in SHARED_KEYS}
    # Hydra passes lists as ListConfig, so the models are built from one here too.
    return MODELS[model](OmegaConf.create(list(input_shape)), 10, **{**own, **keys}, batchnorm=batchnorm,
                         dropout=dropout)


def batch(input_shape, size=4):
    return torch.randn(size, *input_shape), torch.arange(size) % 10


@pytest.mark.parametrize("model,shape,regularization", CASES)
def test_forward_gives_logits_and_every_parameter_a_gradient(model, shape, regularization):
    torch.manual_seed(0)
    network = build(model, SHAPES[shape], **REGULARIZATIONS[regularization])
    x, y = batch(SHAPES[shape])
    logits = network(x)
    assert logits.shape == (4, 10)
    torch.nn.functional.cross_entropy(logits, y).backward()
    for name, parameter in network.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
            assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("model,shape,regularization", CASES)
def test_a_few_steps_on_one_batch_reduce_its_loss(model, shape, regularization):
    torch.manual_seed(0)
    network = build(model, SHAPES[shape], **REGULARIZATIONS[regularization])
    x, y = batch(SHAPES[shape])
    optimizer = torch.optim.Adam(network.parameters(), lr=2e-3)

    def loss(seed=None):
        if seed is not None:  # the same dropout masks before and after training
            torch.manual_seed(seed)
        return torch.nn.functional.cross_entropy(network(x), y)

    with torch.no_grad():
        before = loss(seed=1).item()
    for _ in range(10):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    with torch.no_grad():
        after = loss(seed=1).item()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("model,shape,regularization", CASES)
def test_eval_mode_is_deterministic(model, shape, regularization):
    torch.manual_seed(0)
    network = build(model, SHAPES[shape], **REGULARIZATIONS[regularization])
    x, _ = batch(SHAPES[shape])
    network(x)  # one training-mode step moves BatchNorm's running stats away from their start
    network.eval()
    with torch.no_grad():
        assert torch.equal(network(x), network(x))


@pytest.mark.parametrize("model", MODELS)
def test_channels_last_inputs_give_the_same_logits(model):
    torch.manual_seed(0)
    network = build(model, SHAPES["cifar10"], batchnorm=True).eval()
    x, _ = batch(SHAPES["cifar10"])
    with torch.no_grad():
        expected = network(x)
        network = network.to(memory_format=torch.channels_last)
        assert torch.allclose(network(x.to(memory_format=torch.channels_last)), expected, atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_torch_export_traces_the_model(model):
    # MLflow logs a model as a torch.export program; one that cannot be traced falls back to a pickle.
    network = build(model, SHAPES["digits"], batchnorm=True, dropout=0.3).eval()
    program = torch.export.export(network, (torch.zeros(2, *SHAPES["digits"]),))
    x, _ = batch(SHAPES["digits"], size=2)
    with torch.no_grad():
        assert torch.allclose(program.module()(x), network(x), atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_non_image_input_shape_is_rejected_naming_the_model(model):
    with pytest.raises(ValueError) as error:
        build(model, [2])
    assert f"model {MODELS[model].__name__} needs image inputs" in str(error.value)
    assert "input_shape [2]" in str(error.value)


BAD_KEYS = [
    # (model, input_shape, keys, words the message must contain)
    ("vgg", [1, 8, 8], dict(blocks=[64, "X"]), ["model.blocks", "'X'", '"M"']),
    ("vgg", [1, 8, 8], dict(blocks=[64, 0, "M"]), ["model.blocks", "entry 0", ">= 1"]),
    ("vgg", [1, 8, 8], dict(blocks=[8, "M", "M", "M", "M"]), ["model.blocks", "[1, 8, 8]", "below 1x1"]),
    ("cnn", [1, 8, 8], dict(pool_after=[0, 3]), ["model.pool_after=[0, 3]", "from 0 to 2"]),
    ("cnn", [1, 8, 8], dict(pool_after=[-1]), ["model.pool_after=[-1]", "from 0 to 2"]),
    ("cnn", [1, 8, 8], dict(pool_after=[1, 1]), ["model.pool_after=[1, 1]", "at most once"]),
    ("cnn", [1, 8, 8], dict(channels=[8] * 4, pool_after=[0, 1, 2, 3]), ["model.pool_after", "[1, 8, 8]"]),
    ("lenet", [1, 8, 8], dict(channels=[6, 16, 32, 64]), ["model.channels", "[1, 8, 8]", "below 1x1"]),
    ("resnet", [1, 8, 8], dict(stages=[2, 0]), ["model.stages=[2, 0]", ">= 1"]),
    ("resnet", [1, 8, 8], dict(width=0), ["model.width=0", ">= 1"]),
]


@pytest.mark.parametrize("model,input_shape,keys,words", BAD_KEYS, ids=[f"{m}-{k}" for m, _, k, _ in BAD_KEYS])
def test_bad_model_keys_are_rejected_naming_the_key(model, input_shape, keys, words):
    with pytest.raises(ValueError) as error:
        build(model, input_shape, **keys)
    for word in words:
        assert word in str(error.value), str(error.value)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("regularization", ["none", "all"])
def test_config_composes_and_builds(model, regularization, tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", "data=digits", f"regularization={regularization}",
                                           f"paths.output_dir={tmp_path}"])
    network = build_network(cfg.model)
    assert type(network) is MODELS[model]
    # The YAML keys are the __init__ arguments, one to one.
    assert set(cfg.model) - {"_target_", *PIPELINE_KEYS} == set(inspect.signature(MODELS[model]).parameters)
    network.eval()
    with torch.no_grad():
        logits = network(torch.zeros(2, *cfg.data.input_shape))
    assert logits.shape == (2, cfg.data.num_classes)
    assert math.isfinite(logits.abs().sum().item())
