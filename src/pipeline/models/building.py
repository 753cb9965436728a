"""A model config becomes a network: every key is an __init__ argument except the ones the pipeline applies to any
network afterwards (where its weights start, which parts stay fixed: pipeline/transfer.py)."""
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

PIPELINE_KEYS = ("init_from", "freeze")  # every model has them (conf/config.yaml); no network takes them


def build_network(model_cfg: DictConfig) -> nn.Module:
    """The network `model_cfg` names, its interpolations (data sizes, regularization) resolved."""
    arguments = OmegaConf.to_container(model_cfg, resolve=True)
    for key in PIPELINE_KEYS:
        arguments.pop(key, None)
    return instantiate(arguments)
