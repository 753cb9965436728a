"""modules=scratch: every torch.nn module of a built network replaced by the class conf/modules/ names for it.

The replacement adopts the very parameter and buffer tensors of the module it replaces, so tied weights stay tied,
a checkpoint loads either way, and nothing is drawn from the run's random stream: with the same seed a scratch run
starts from the same weights, sees the same batches and the same dropout masks as the torch run (except between a
stacked RNN's layers, where torch's RNN draws its masks inside its own kernel).
"""
import logging
from collections import Counter
from collections.abc import Mapping

import torch
from torch import nn

from pipeline.errors import ConfigError, first_line
from pipeline.imports import import_object

log = logging.getLogger(__name__)

# Modules the project writes itself that a torch.nn name also covers (the autoencoder's Unpool is MaxUnpool2d's rule).
ALSO_REPLACES = {"MaxUnpool2d": ("pipeline.models.autoencoder.Unpool",)}
# Modules that compute nothing worth writing by hand: kept without mention.
STRUCTURAL = (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Flatten, nn.Unflatten, nn.Identity)


def replacements(layers: Mapping[str, str]) -> dict[type, type]:
    """{class replaced: its replacement} from conf/modules/'s `layers` ({torch.nn class name: class path})."""
    table = {}
    for name, path in (layers or {}).items():
        replaced = getattr(nn, name, None)
        if not (isinstance(replaced, type) and issubclass(replaced, nn.Module)):
            raise ConfigError(f"modules.layers.{name}: {name!r} is not a torch.nn module class "
                              f"(e.g. Linear, Conv2d, BatchNorm1d, LSTM)")
        replacement = import_object(path, f"modules.layers.{name}")
        if not hasattr(replacement, "like"):
            raise ConfigError(f"modules.layers.{name}={path!r} has no classmethod like(module) building it with the "
                              f"settings of the torch.nn.{name} it replaces (see pipeline.scratch.linear.Linear)")
        table[replaced] = replacement
        for also in ALSO_REPLACES.get(name, ()):
            table[import_object(also, also)] = replacement
    return table


def adopt(replacement: type, module: nn.Module) -> nn.Module:
    """An instance of `replacement` with `module`'s settings, mode, parameters and buffers (the same tensors)."""
    with torch.random.fork_rng(devices=[]):  # its own initialisation is thrown away: draw nothing for it
        try:
            new = replacement.like(module)
        except (AttributeError, TypeError) as error:  # a class meant for another module
            raise ConfigError(f"{replacement.__module__}.{replacement.__name__}.like() cannot build a replacement for "
                              f"{module!r}: {first_line(error)}") from None
    mine, theirs = dict(new.named_parameters(recurse=False)), dict(module.named_parameters(recurse=False))
    mine_buffers, their_buffers = dict(new.named_buffers(recurse=False)), dict(module.named_buffers(recurse=False))
    if mine.keys() != theirs.keys() or mine_buffers.keys() != their_buffers.keys():
        raise ConfigError(f"{replacement.__module__}.{replacement.__name__} has parameters {sorted(mine)} and buffers "
                          f"{sorted(mine_buffers)}; the {type(module).__name__} it replaces has {sorted(theirs)} and "
                          f"{sorted(their_buffers)}: the names must be the same")
    for name, tensor in {**mine, **mine_buffers}.items():
        theirs_tensor = theirs.get(name, their_buffers.get(name))
        if tensor.shape != theirs_tensor.shape:
            raise ConfigError(f"{replacement.__name__}.{name} has shape {tuple(tensor.shape)}; the "
                              f"{type(module).__name__} it replaces has {tuple(theirs_tensor.shape)}")
    new._parameters.update(module._parameters)
    new._buffers.update(module._buffers)
    return new.train(module.training)


def swap_modules(network: nn.Module, layers: Mapping[str, str]) -> nn.Module:
    """`network` with each module whose class `layers` names replaced (the root too); logs what was replaced and
    which torch.nn modules that compute something were kept."""
    table = replacements(layers)
    if not table:
        return network
    done: dict[int, nn.Module] = {}  # a module used in two places is replaced once
    replaced, kept = Counter(), Counter()

    def convert(module: nn.Module) -> nn.Module:
        if id(module) in done:
            return done[id(module)]
        if type(module) in table:
            new = adopt(table[type(module)], module)
            replaced[type(module).__name__] += 1
        else:
            new = module
            for name, child in module._modules.items():
                if child is not None:
                    module._modules[name] = convert(child)
            if type(module).__module__.startswith("torch.nn") and not isinstance(module, STRUCTURAL):
                kept[type(module).__name__] += 1
        done[id(module)] = new
        return new

    network = convert(network)
    log.info("modules: replaced %s%s", ", ".join(f"{name} x{n}" for name, n in replaced.items()) or "nothing",
             f"; kept from torch.nn: {', '.join(f'{name} x{n}' for name, n in kept.items())}" if kept else "")
    return network
