"""The joblib launcher's worker processes, ended at once when a sweep is over. loky would otherwise ask each to
exit and wait for it, and a worker that has run jobs tears down torch, Lightning and MLflow first (measured 1.3 s
for two workers on 2 cores), which the sweeping process waits for before it can end. Nothing is lost by not waiting:
every job has written its runs and files and flushed its output (cli.run_job) before its result came back."""


def is_joblib(launcher) -> bool:
    """Whether `launcher` is Hydra's joblib launcher (by name: its plugin is imported only where it is chosen)."""
    return type(launcher).__name__ == "JoblibLauncher"


def stop_workers(launcher) -> None:
    """End the joblib launcher's workers (a no-op for any other launcher)."""
    if not is_joblib(launcher):
        return
    from joblib.externals.loky import get_reusable_executor

    # reuse=True: the executor the launcher used, whatever its settings (a sweep always started it: its checks ran
    # there, job_checks.py)
    get_reusable_executor(reuse=True).shutdown(wait=True, kill_workers=True)


def fork_from_warm_process(launcher) -> None:
    """Have the joblib launcher's workers forked from one process that imports, once and at once, what every job
    needs (worker_imports.py), instead of each worker importing it again in a fresh interpreter: a 4-job sweep of
    the default run 12.0 s -> 10.2-10.9 s on 2 cores (benchmarks/sweeps.py). The threads that process has when it
    forks are numpy's and scipy's OpenBLAS pools and jemalloc's, which re-initialise in a forked child."""
    import multiprocessing

    if not is_joblib(launcher) or "forkserver" not in multiprocessing.get_all_start_methods():
        return
    import multiprocessing.forkserver

    from joblib.externals.loky.backend.context import set_start_method

    multiprocessing.get_context("forkserver").set_forkserver_preload(["pipeline.search.worker_imports"])
    set_start_method("forkserver", force=True)
    multiprocessing.forkserver.ensure_running()
