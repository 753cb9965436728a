"""A sweep in MLflow: one parent run, a child per job, and, however the sweep ends, a summary on the parent.

The parent's records are written by the tracking process (remote_tracking.py, the one the sweep's jobs use when they
run in this process; parent_records.py is what it does), so the sweeping process never imports MLflow: MLflow's
import and store (~2.5 s) run on another core while this process imports torch for the job checks, instead of in
front of them. Under a parallel launcher the same commands run in this process (remote_tracking.InProcessTracking).
"""
from contextlib import contextmanager

from omegaconf import DictConfig

from pipeline import liveness, remote_tracking, tracking
from pipeline.search.job_environment import job_environment, machine_environment

ENV = (tracking.PARENT_RUN_ENV, tracking.PARENT_RUN_ENV + "_URI", tracking.SWEPT_KEYS_ENV)


class SweepParent:
    """The open parent run (`run_id` None without MLflow), and the jobs that failed: (overrides, one-line error),
    which the summary lists."""

    def __init__(self, run_id: str | None = None, tracker=None):
        self.run_id, self.tracker = run_id, tracker
        self.failures: list[tuple[list[str], str]] = []

    def mark_child(self, trial_number: int, state: str, reason: str | None = None, searched: dict | None = None):
        """A search's verdict on a trial's run (parent_records.mark_child)."""
        if self.run_id:
            self.tracker.call("on_sweep", "mark_child", self.run_id, trial_number, state, reason, searched)

    def record(self, metrics: dict[str, float] | None = None, texts: dict[str, str] | None = None) -> None:
        """Metrics and text files (path: text) on the parent run."""
        if self.run_id:
            self.tracker.call("on_sweep", "record", self.run_id, metrics or {}, texts or {})


def open_store(config: DictConfig) -> None:
    """Have the process that writes the sweep's records import MLflow and make its store ready (store.py) before the
    parent run is opened: the tracking process, meanwhile, on another core; under a parallel launcher, this one."""
    if tracking.uses_mlflow(config):
        remote_tracking.open_store(config.logger.tracking_uri)


@contextmanager
def sweep_parent_run(config: DictConfig, resume_run_id: str | None = None, tags=None):
    """Create the parent run (or reopen `resume_run_id`, a search continued) and hand its id to the jobs (by
    environment variable, set in whichever process runs a job: job_environment.py). When the block ends the parent
    is summarised (parent_records.close_parent) and ends FINISHED if any child finished, FAILED if none did; when it
    is interrupted, it and every child still running end KILLED. The summary is printed."""
    if not tracking.uses_mlflow(config):
        with job_environment(config, machine_environment()):
            yield SweepParent()
        return
    uri = config.logger.tracking_uri
    tracker = remote_tracking.process()
    sweep = " ".join(config.hydra.overrides.task) or "defaults"
    run_id = tracker.call("open_sweep", uri, config.logger.experiment_name, sweep, list(config.hydra.overrides.task),
                          {"pipeline.sweep_dir": str(config.hydra.sweep.dir), **(tags or {})},
                          liveness.process_tags(), resume_run_id)
    parent = SweepParent(run_id, tracker)
    try:
        handed = {**machine_environment(), **dict(zip(ENV, (run_id, uri, ",".join(swept_keys(config)))))}
        with job_environment(config, handed):
            yield parent
    except BaseException as error:
        print(tracker.call("close_sweep", parent.failures, tracking.end_status(error), tracking.end_reason(error)))
        raise
    print(tracker.call("close_sweep", parent.failures))


def swept_keys(config: DictConfig) -> list[str]:
    """The keys the sweep varies (`optimizer=sgd,adam`, or a sweeper's search space): they name the children."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
    keys = [override.get_key_element() for override in parsed if override.is_sweep_override()]
    return keys + list(config.hydra.sweeper.get("params") or {}) + list(config.hydra.sweeper.get("lists") or {})
