"""Resume: every run keeps `checkpoints/last.ckpt` (weights, optimizer, scheduler, loop, the best-so-far metrics, and
the random state of shuffling, augmentation and dropout), so `resume=<run id | auto>` continues a stopped or crashed
run from its last completed epoch, in the same MLflow run and folder, to the result an uninterrupted run gives."""
import hashlib
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError

DIGEST = "pipeline.config_digest"  # MLflow tag: which config a run trains (resume=auto looks for it)
OUTPUT_DIR = "pipeline.output_dir"  # MLflow tag: the folder that holds the run's checkpoints
LAST = "last.ckpt"
# Keys that do not change what a run computes: a resumed run may differ in them.
NOT_PART_OF_THE_RUN = ("resume", "threads", "paths")


class RandomState(pl.Callback):
    """Carries the global random state (torch, CUDA, numpy, Python: dropout and any other draw) in the checkpoint,
    as tensors and plain values, which loading with torch.load(weights_only=True) accepts."""

    def state_dict(self) -> dict:
        kind, keys, position, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                           has_gauss, gauss),
                "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def load_state_dict(self, state_dict: dict) -> None:
        torch.set_rng_state(state_dict["torch"])
        kind, keys, position, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
        random.setstate(state_dict["python"])
        if state_dict["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def last_checkpoint(output_dir: str) -> pl.callbacks.ModelCheckpoint:
    """Writes `<output_dir>/checkpoints/last.ckpt` after every epoch (atomically: Lightning saves through a
    temporary file), whatever the callbacks group says."""
    return pl.callbacks.ModelCheckpoint(dirpath=Path(output_dir) / "checkpoints", filename=LAST.removesuffix(".ckpt"),
                                        monitor=None, save_top_k=1, enable_version_counter=False)


def config_digest(cfg: DictConfig) -> str:
    """A fingerprint of what the run computes: its resolved config without the keys that don't change that. The
    output folder is blanked before resolving, since checkpoint and log folders interpolate it."""
    cfg = cfg.copy()
    cfg.paths.output_dir = "<output_dir>"
    values = {key: value for key, value in OmegaConf.to_container(cfg, resolve=True).items()
              if key not in NOT_PART_OF_THE_RUN}
    return hashlib.md5(OmegaConf.to_yaml(OmegaConf.create(values)).encode(), usedforsecurity=False).hexdigest()


@dataclass
class Resumable:
    run_id: str
    output_dir: str

    @property
    def checkpoint(self) -> Path:
        return Path(self.output_dir) / "checkpoints" / LAST


def find(cfg: DictConfig, client, experiment_id: str, output_dir: str | None = None) -> Resumable | None:
    """What `resume` in the config points at: None for a new run. `auto` takes the newest run of this experiment
    with the same config digest that did not finish and has a last checkpoint (only in `output_dir`, if given)."""
    wanted = cfg.get("resume")
    if not wanted:
        return None
    if wanted == "auto":
        runs = client.search_runs([experiment_id], f"tags.`{DIGEST}` = '{config_digest(cfg)}'",
                                  order_by=["attributes.start_time DESC"])
        for run in runs:
            found = Resumable(run.info.run_id, run.data.tags.get(OUTPUT_DIR, ""))
            if run.info.status != "FINISHED" and (output_dir is None or found.output_dir == output_dir) \
                    and found.checkpoint.exists():
                return found
        return None
    return by_run_id(cfg, client, str(wanted))


def recorded_config(client, run_id: str) -> DictConfig:
    """The config a run was started with (its config/config.yaml artifact), to be resumed by run id alone."""
    text = Path(client.download_artifacts(run_id, "config/config.yaml")).read_text()
    cfg = OmegaConf.create(text)
    cfg.resume = run_id
    return cfg


def by_run_id(cfg: DictConfig | None, client, run_id: str) -> Resumable:
    """The run `resume=<run id>` names, refused with one line when it can't be continued, or when `cfg` (None:
    the run's own recorded config is used) is not the config it was trained with."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(f"resume={run_id}: no such run in {client.tracking_uri}") from None
    found = Resumable(run_id, run.data.tags.get(OUTPUT_DIR, ""))
    if run.info.status in ("FINISHED", "RUNNING"):
        state = "finished" if run.info.status == "FINISHED" else "still running"
        raise ConfigError(f"resume={run_id}: the run is {state}; only a stopped, failed or killed run can be resumed")
    if cfg is not None and run.data.tags.get(DIGEST) != config_digest(cfg):
        raise ConfigError(f"resume={run_id}: that run was trained with another config; give the same command it "
                          "was started with (its config/overrides.yaml in MLflow), plus resume=...")
    if not found.checkpoint.exists():
        raise ConfigError(f"resume={run_id}: it has no last checkpoint ({found.checkpoint}): it stopped before its "
                          "first epoch ended, or the file was removed")
    return found


def quiet_existing_folder_warning() -> None:
    """A resumed run writes into its own checkpoint folder, which Lightning would warn is not empty."""
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
