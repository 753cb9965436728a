"""Checking a sweep's jobs before any runs: in this process, or, under the joblib launcher, in the launcher's own
worker processes.

A check builds each job's model, so it needs torch and Lightning: ~8 s of imports on a 2-core machine. Done in
the sweeping process, that is paid there, then again in every worker the launcher starts afterwards. Done in the
workers (loky keeps them for the launch that follows: same n_jobs, same settings), the sweeping process never
imports torch; the workers are forked from one process that has imported what the jobs need anyway
(launcher_workers.fork_from_warm_process).
"""
from omegaconf import DictConfig

from pipeline.search.launcher_workers import is_joblib


def problem(cfg: DictConfig, singleton_state=None) -> str | None:
    """The one-line reason this composed job config would be refused (checks.check_job), None if it passes.
    `singleton_state` is Hydra's state of the sweeping process (its HydraConfig), set in a worker first as
    Hydra's own launchers do, so the config's ${hydra:...} values resolve there as they do here."""
    if singleton_state is not None:
        from hydra.core.singleton import Singleton

        Singleton.set_state(singleton_state)
    from pipeline import collector
    from pipeline.cli import describe

    check_job = collector.import_module("pipeline.checks").check_job  # torch's import: once, uncollected

    try:
        check_job(cfg)
    except Exception as error:
        message = describe(error)
        if message is None:
            raise
        return message
    collector.import_module("pipeline.train")  # what the job will import: the worker is warm when it arrives

    return None


def problems(configs: list[DictConfig], launcher) -> list[str | None]:
    """`problem` of each config, in the joblib launcher's workers when that is the launcher, else here."""
    if not is_joblib(launcher):
        return [problem(cfg) for cfg in configs]
    from hydra.core.singleton import Singleton
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg
    from joblib import Parallel, delayed

    settings = launcher.joblib  # exactly what the launcher will pass, so loky reuses these workers for the jobs
    settings["backend"] = "loky"
    process_joblib_cfg(settings)
    state = Singleton.get_state()
    return list(Parallel(**settings)(delayed(problem)(cfg, state) for cfg in configs))
