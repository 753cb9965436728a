"""params.yaml: the composed config the DVC stages read.

DVC's Hydra integration writes it on `dvc exp run -S key=value` with every interpolation resolved, so
paths in it are plain strings. `python -m pipeline.stages.params [override ...]` writes it the same way
(DVC's own function), for a plain `dvc repro` after conf/ changed.
"""
import os
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.errors import ConfigError

PARAMS_FILE = Path("params.yaml")
CONF_DIR = Path("conf")  # in the project root, where DVC looks for it too
# Environment variables the conf/ defaults read: unset when writing the committed params.yaml, so that it
# holds the portable defaults and not one machine's folders.
MACHINE_VARIABLES = ("PIPELINE_ROOT", "PIPELINE_DATA_DIR", "PIPELINE_CACHE_DIR", "MLFLOW_TRACKING_URI")


def load(path: Path = PARAMS_FILE) -> DictConfig:
    """The config from params.yaml, its project paths anchored at the project (see anchor_paths)."""
    if not path.exists():
        raise ConfigError(f"{path} not found in {Path.cwd()}: run the stages with `dvc repro` from the project "
                          f"root, or write it with `python -m pipeline.stages.params`")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or "data" not in cfg or "model" not in cfg:
        raise ConfigError(f"{path} is not a composed pipeline config (no data or model section): write it with "
                          f"`python -m pipeline.stages.params` or `dvc exp run -S model=...`")
    anchor_paths(cfg, os.environ.get("DVC_ROOT"))
    return cfg


def anchor_paths(cfg: DictConfig, project: str | None) -> None:
    """Values under a relative `paths.root` (the store ./mlflow.db, ./data) are the project's, not the working
    copy's: a queued `dvc exp run` runs in a temporary copy, and DVC_ROOT names the project it came from."""
    root = cfg.paths.root
    if not project or Path(root).is_absolute():
        return
    prefixes = [(f"{root}/", f"{project}/"), (f"sqlite:///{root}/", f"sqlite:///{project}/")]

    def walk(node):
        for key, value in node.items() if isinstance(node, DictConfig) else enumerate(node):
            if isinstance(value, (DictConfig, ListConfig)):
                walk(value)
            elif value == root:
                node[key] = project
            elif isinstance(value, str):
                for old, new in prefixes:
                    if value.startswith(old):
                        node[key] = new + value[len(old):]
                        break

    walk(cfg)


def write(overrides: list[str], path: Path = PARAMS_FILE) -> None:
    """Compose conf/ with `overrides` into `path` exactly as DVC's Hydra integration does."""
    from dvc.utils.hydra import compose_and_dump

    saved = {name: os.environ.pop(name) for name in MACHINE_VARIABLES if name in os.environ}
    try:
        compose_and_dump(path, str(CONF_DIR.resolve()), None, "config", "", overrides)
    finally:
        os.environ.update(saved)


if __name__ == "__main__":
    write(sys.argv[1:])
    print(f"wrote {PARAMS_FILE} (conf/ defaults{' with ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''})")
