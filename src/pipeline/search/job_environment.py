"""Environment variables a sweep hands to its jobs, wherever the launcher runs them.

Setting them in the sweeping process reaches only jobs run in it (the basic launcher) or in processes started after
(a fresh joblib worker). Hydra sets `hydra.job.env_set` in the job's own process just before the job runs, and every
launcher recomposes a job's config from the sweep's `hydra.overrides.hydra` plus the job's overrides: so the values
are added there too, and reach workers that were already running (joblib's, warmed by job_checks.py) or run on
other machines.
"""
import os
from contextlib import contextmanager

from omegaconf import DictConfig, read_write

from pipeline.search.report import value_text


def machine_environment() -> dict[str, str]:
    """The sweeping process's folders and store (PIPELINE_ROOT, ..., MLFLOW_TRACKING_URI), for jobs that run in
    processes started elsewhere (Ray's workers, SLURM jobs) without them; credentials are not handed over (they
    would be written into the job's saved Hydra config): workers need their own."""
    from pipeline.stages.params import MACHINE_VARIABLES

    return {name: os.environ[name] for name in MACHINE_VARIABLES if os.environ.get(name)}


@contextmanager
def job_environment(config: DictConfig, values: dict[str, str]):
    """Set `values` for this process and, through the sweep's Hydra overrides, for every job it launches."""
    added = [f"++hydra.job.env_set.{name}={value_text(value)}" for name, value in values.items()]
    overrides = config.hydra.overrides.hydra
    earlier = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    with read_write(overrides):
        overrides.extend(added)
    try:
        yield
    finally:
        for name, value in earlier.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        with read_write(overrides):
            for override in added:
                overrides.remove(override)
