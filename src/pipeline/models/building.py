"""A model config becomes a network: every key is an __init__ argument except the ones the pipeline applies to any
network afterwards (where its weights start, which parts stay fixed: pipeline/transfer.py). The network is built from
torch.nn; `modules=scratch` then swaps in the labs' own modules (pipeline/scratch/swap.py)."""
from collections.abc import Mapping

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

PIPELINE_KEYS = ("init_from", "freeze")  # every model has them (conf/config.yaml); no network takes them


def build_network(model_cfg: DictConfig, layers: Mapping[str, str] | None = None) -> nn.Module:
    """The network `model_cfg` names, its interpolations (data sizes, regularization) resolved, with each torch.nn
    module named in `layers` (conf/modules/'s) replaced."""
    arguments = OmegaConf.to_container(model_cfg, resolve=True)
    for key in PIPELINE_KEYS:
        arguments.pop(key, None)
    network = instantiate(arguments)
    if layers:
        from pipeline.scratch.swap import swap_modules

        network = swap_modules(network, layers)
    return network


def module_layers(cfg: DictConfig) -> dict[str, str]:
    """conf/modules/'s replacements ({} for modules=torch or a config without the group)."""
    return dict(OmegaConf.select(cfg, "modules.layers", default=None) or {})
