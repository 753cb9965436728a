"""Where a search keeps its Optuna study, how the same command finds it again, and how a trial run reaches it.

The study lives in SQLite beside the MLflow store (optuna.db next to mlflow.db), named by a digest of what defines
the search (strategy, objectives, space, fixed overrides), so running the same command again continues it. The
sweeper (one process) asks and tells; trial runs, possibly in joblib workers, only report their per-epoch values
for pruning, finding the study through one environment variable.
"""
import hashlib
import json
import os
from pathlib import Path

from pipeline.errors import ConfigError

ENV = "PIPELINE_SEARCH_STUDY"  # JSON: storage, study, pruner, monitor; set by the sweeper for its trial runs
PRUNERS = ("median", "successive_halving", "none")


def storage_url(tracking_uri: str, root: str) -> str:
    """sqlite:///<folder of mlflow.db>/optuna.db for a SQLite store, else <paths.root>/optuna.db."""
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).parent
    else:
        folder = Path(root)
    return f"sqlite:///{folder.resolve() / 'optuna.db'}"


def study_name(name: str, definition: dict) -> str:
    """`<name>-<digest>`: the same search definition gives the same study (resume), another gives a new one."""
    digest = hashlib.md5(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{name}-{digest}"


def storage(url: str):
    """Optuna's storage on `url`. A new SQLite file gets its tables under the lock the MLflow store uses
    (store.locked): two processes creating them at once would otherwise collide, as MLflow's did (issue 10)."""
    import contextlib

    import optuna

    from pipeline.store import locked, sqlite_file

    db = sqlite_file(url)
    # Trial runs report from other processes: wait for SQLite's lock instead of failing at once.
    with locked(db) if db is not None else contextlib.nullcontext():
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def pruner(name: str, warmup_epochs: int = 1):
    """median: stop a trial whose value at an epoch is worse than the median of earlier trials at that epoch;
    successive_halving: keep the best 1/3 at each rung (epochs 1, 3, 9, ...); none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup_epochs)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner={name!r} is invalid: must be one of {', '.join(PRUNERS)}")


def fail_orphans(study) -> int:
    """Trials left RUNNING by a search that died (kill -9, power loss) are marked FAIL: none of them can finish."""
    from optuna.trial import TrialState

    orphans = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in orphans:
        study._storage.set_trial_system_attr(trial._trial_id, "fail_reason", "its search died while it ran")
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(orphans)


def for_trial_runs(url: str, name: str, pruner_name: str, monitor: str) -> dict[str, str]:
    """The environment a trial's run finds its study by (handed to the jobs by job_environment.py)."""
    return {ENV: json.dumps({"storage": url, "study": name, "pruner": pruner_name, "monitor": monitor})}


def of_this_run() -> dict | None:
    """The study this run is a trial of (set by the search sweeper), or None."""
    value = os.environ.get(ENV)
    return json.loads(value) if value else None
