"""Data-parallel training (Lightning DDP, trainer=ddp_cpu|ddp_gpu): which process leads, and what the others follow.

Lightning's `ddp` starts the other processes of a node by running the same command again (its subprocess launcher;
on a cluster, torchrun or srun start them all). Every process trains on its share of the batches
(data/batches.py) and metrics are summed over processes (torchmetrics, `sync_dist`); only the leader, global rank 0,
opens the MLflow run, logs and exports. The leader's exact config (after `resume` and the sizes found in the data)
and the checkpoint it resumes from reach the processes Lightning starts in the environment they inherit, so they
need neither the MLflow store nor their own resume search.
"""
import json
import os

from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

HANDED_ENV = "PIPELINE_DDP_LEADER"  # the leader's config and checkpoint, for the processes Lightning starts
RANK_VARIABLES = ("RANK", "NODE_RANK", "LOCAL_RANK", "SLURM_PROCID")  # torchrun, Lightning's launcher, SLURM
RELAUNCHING = ("ddp", "ddp_find_unused_parameters_true", "ddp_find_unused_parameters_false")


def is_leader() -> bool:
    """Whether this is global rank 0 (or not part of a distributed run at all)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def processes(trainer: DictConfig) -> int:
    """How many processes the trainer config trains with (devices: a count, a list of ids, or -1/auto: every GPU
    here, else one), times its nodes."""
    devices = trainer.get("devices", 1)
    count = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else devices
    if not isinstance(count, int) or count <= 0:
        import torch

        count = torch.cuda.device_count() if trainer.get("accelerator") in ("gpu", "cuda") else 1
    return max(count, 1) * int(trainer.get("num_nodes") or 1)


def strategy_name(trainer: DictConfig) -> str:
    strategy = trainer.get("strategy", "auto")
    return str(strategy.get("_target_", "") if OmegaConf.is_dict(strategy) else strategy)


def in_multirun() -> bool:
    """Whether this process runs a job of a sweep (-m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check(cfg: DictConfig, multirun: bool | None = None) -> None:
    """Refuse what Lightning's ddp cannot do here, in one line, before anything starts. `multirun`: whether `cfg`
    is a sweep's job (None: whether this process runs one)."""
    name = strategy_name(cfg.trainer)
    multirun = in_multirun() if multirun is None else multirun
    if multirun and name in RELAUNCHING:
        raise ConfigError(f"trainer.strategy={name} under -m: Lightning's ddp starts its other processes by running "
                          "the whole command again, which would start the sweep again in each; in sweeps use "
                          "trainer.strategy=ddp_spawn (trainer=ddp_cpu trainer.strategy=ddp_spawn)")
    if processes(cfg.trainer) > 1 and not splits_across_processes(cfg.data):
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} with data={cfg.data.name}: its batches are not split "
                          "across processes (only in-memory datasets are: digits, images, names, toy sets); train it "
                          "on one device")


def splits_across_processes(data: DictConfig) -> bool:
    from hydra.utils import get_class

    from pipeline.data.in_memory import InMemoryDataModule

    datamodule = get_class(data._target_)
    return issubclass(datamodule, InMemoryDataModule) and datamodule.splits_across_processes


def prepare(trainer: DictConfig) -> None:
    """On one machine the processes talk over loopback (gloo otherwise picks the interface the host name resolves
    to, which in containers may not route back)."""
    if processes(trainer) > 1 and int(trainer.get("num_nodes") or 1) == 1 and os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    if strategy_name(trainer).startswith("ddp_spawn"):
        import torch.multiprocessing

        # ddp_spawn pickles the datamodule's tensors to its processes through shared memory; torch's default
        # (file descriptors) failed here with "unable to resize file" (EINVAL), named files in /dev/shm work.
        torch.multiprocessing.set_sharing_strategy("file_system")


def hand_over(cfg: DictConfig, checkpoint) -> None:
    """Before the fit: what the processes Lightning is about to start must train exactly as the leader does."""
    if processes(cfg.trainer) > 1:
        os.environ[HANDED_ENV] = json.dumps({"config": OmegaConf.to_yaml(cfg, resolve=True),
                                             "checkpoint": str(checkpoint) if checkpoint else None})


def handed() -> tuple[DictConfig, str | None] | None:
    """In a process Lightning started: the leader's config and checkpoint (None: this process starts on its own,
    e.g. one of torchrun's, and composes the same config from the same command)."""
    text = os.environ.get(HANDED_ENV)
    if not text:
        return None
    values = json.loads(text)
    return OmegaConf.create(values["config"]), values["checkpoint"]
