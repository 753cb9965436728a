"""How many cores a job has: this process's share of the machine, and how many jobs of its sweep share it."""
import os


def cores() -> int:
    """The CPU cores this process may use (a container's or cluster job's share, where the OS says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parallel_jobs() -> int:
    """How many jobs this process's sweep runs at once on this machine: the joblib launcher's n_jobs (-1: one per
    core), else 1."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return 1
    launcher = HydraConfig.get().launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return 1
    n_jobs = int(launcher.get("n_jobs") or 1)
    return cores() if n_jobs < 0 else n_jobs
