"""A training process's MLflow work, done by a second process (tracking_worker.py) started when the run launches.

MLflow's import and store cost ~1.6 s and its model export ~0.6 s; in the trainer's own process they would sit in
front of the first step and after the last (an import on one core cannot overlap another import: the import lock
and the GIL serialise them). In a second process they run on another core while the trainer imports torch, and
the export while the trainer draws the plots. Every record is waited for (a run killed at any point has in the store
what its checkpoints have) except the model and its description, which the run's end waits for, and the epoch
metrics, which the next checkpoint waits for (mlflow_logger.EpochWrites): a run that ends FINISHED has all its records
written. A sweep run in this process writes its parent run through the same worker (search/sweep_parent_run.py).
A job of a parallel sweep (joblib, n_jobs > 1) runs the same commands in its own process instead: every core already
has a job, and a second process would only add its imports.
"""
import atexit
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pipeline.cores import parallel_jobs
from pipeline.errors import TrainingError

log = logging.getLogger(__name__)
_process: "TrackingProcess | InProcessTracking | None" = None
uri_in_use: str | None = None  # the store of the run in progress (an in-process reader, e.g. a GAN's judge, opens it)


class TrackingProcess:
    """The worker process and the two pipes to it (commands, replies)."""

    def __init__(self):
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.tracking_worker", str(commands_read), str(replies_write),
             str(os.getpid())], pass_fds=(commands_read, replies_write))
        os.close(commands_read)
        os.close(replies_write)
        self.commands = os.fdopen(commands_write, "wb")
        self.replies = os.fdopen(replies_read, "rb")
        self.lock = threading.Lock()

    def send(self, name: str, *args) -> None:
        """Run a command without waiting (its error, if any, comes back at the next call)."""
        with self.lock:
            self.write((False, name, args))

    def call(self, name: str, *args):
        """Run a command and return its result, or raise its error (or an earlier command's)."""
        with self.lock:
            self.write((True, name, args))
            try:
                status, value = pickle.load(self.replies)
            except (EOFError, OSError):
                raise self.gone() from None
        if status == "error":
            raise value
        return value

    def write(self, message) -> None:
        try:
            self.commands.write(pickle.dumps(message))
            self.commands.flush()
        except (BrokenPipeError, ValueError):
            raise self.gone() from None

    def alive(self) -> bool:
        return self.process.poll() is None

    def gone(self) -> TrainingError:
        return TrainingError(f"the MLflow tracking process (pid {self.process.pid}) ended unexpectedly (exit status "
                             f"{self.process.poll()}); the run's records stop there")

    def hand_over_model(self, model, example_input) -> None:
        """Send the model over in a file (the worker exports it, tracking.log_model, and removes the file)."""
        import cloudpickle
        import torch

        handle, path = tempfile.mkstemp(prefix="pipeline-model-", suffix=".pt")
        with os.fdopen(handle, "wb") as file:
            torch.save({"model": model, "example": example_input}, file, pickle_module=cloudpickle)
        self.send("log_saved_model", path)

    def close(self) -> None:
        """Close the commands pipe (the worker ends; a run still open is marked KILLED) and wait for it."""
        try:
            self.commands.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


class InProcessTracking:
    """The same commands, run in this process: for a job of a parallel sweep, whose sweep already gives every core
    a job (a second process per job would only add its imports)."""

    def __init__(self):
        from pipeline.tracking_worker import Worker

        self.worker = Worker(os.getpid(), preload=False)
        self.lock = threading.Lock()

    def send(self, name: str, *args) -> None:
        with self.lock:
            self.worker.handle(False, name, args)

    def call(self, name: str, *args):
        with self.lock:
            status, value = self.worker.handle(True, name, args)
        if status == "error":
            raise value
        return value

    def hand_over_model(self, model, example_input) -> None:
        self.send("log_model", model, example_input)

    def alive(self) -> bool:
        return True


def process() -> "TrackingProcess | InProcessTracking":
    """This process's tracking worker, started on first use (run.py starts it at launch)."""
    global _process
    if _process is None or not _process.alive():
        if parallel_jobs() > 1:
            _process = InProcessTracking()
        else:
            _process = TrackingProcess()
            atexit.register(_process.close)
    return _process


NOT_A_RUN = ("-m", "--multirun", "-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-sc",
             "--shell-completion", "logger=csv", "logger=none", "hydra.mode=MULTIRUN")


def start_early(arguments: list[str]) -> None:
    """Start the worker as run.py starts, before Hydra composes the config, and let it import MLflow: the store
    opens sooner and the trainer waits less for its run to start. Not for a sweep (its jobs may run elsewhere), a
    help or config printout, another logger named on the command line, or a data-parallel run's other processes."""
    from pipeline.distributed import is_leader

    if is_leader() and not any(argument in NOT_A_RUN for argument in arguments):
        process().send("import_mlflow")


def open_store(tracking_uri: str) -> None:
    """Start the worker and let it import MLflow and open the store now, while this process imports torch."""
    process().send("open", tracking_uri)


class TrackedRun:
    """An MLflow run in progress, written through the tracking process."""

    def __init__(self, tracking: TrackingProcess, run_id: str, tracking_uri: str):
        global uri_in_use
        self.tracking, self.run_id, self.tracking_uri = tracking, run_id, tracking_uri
        uri_in_use = tracking_uri

    def log_metrics(self, metrics: dict[str, float], step: int = 0, timestamp_ms: int | None = None,
                    wait: bool = True) -> None:
        """Waited for, as the params and texts are, unless `wait` is False: then `written` waits for it (the epoch
        metrics: mlflow_logger.EpochWrites waits before each checkpoint, so a resumed run's history has no gap)."""
        args = ({key: float(value) for key, value in metrics.items()}, step,
                int(time.time() * 1000) if timestamp_ms is None else timestamp_ms)
        if wait:
            self.tracking.call("log_metrics", *args)
        else:
            self.tracking.send("log_metrics", *args)

    def written(self) -> None:
        """Wait until everything sent before is written; raises what failed among those."""
        self.tracking.call("written")

    def log_params(self, params: dict[str, str]) -> None:
        self.tracking.call("log_params", params)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.tracking.call("log_text", text, artifact_file)

    def log_dict(self, values: dict, artifact_file: str) -> None:
        self.tracking.send("log_dict", values, artifact_file)

    def log_files(self, paths, artifact_dir: str) -> None:
        """Log files under `artifact_dir`; waits, as the files may be removed once this returns."""
        self.tracking.call("log_files", [str(path) for path in paths], artifact_dir)

    def log_generated_files(self, artifact_dir: str, make_files) -> None:
        """Let `make_files(folder)` write files (plots) into a scratch folder and log the ones it returns."""
        with tempfile.TemporaryDirectory() as folder:
            self.log_files(make_files(Path(folder)), artifact_dir)

    def log_model(self, model, example_input) -> None:
        """Hand the model over and go on: the tracking process exports it (tracking.log_model) meanwhile."""
        self.tracking.hand_over_model(model, example_input)

    def end(self, status: str, reason: str | None = None) -> None:
        """End the run once everything sent before is written; raises what failed among those."""
        global uri_in_use
        uri_in_use = None
        self.tracking.call("end_run", status, reason)

    @contextmanager
    def ending(self):
        """End the run when the block ends: FINISHED, FAILED on an error, KILLED on Ctrl-C; a run that did not
        finish says why in its `pipeline.error` tag."""
        from pipeline.tracking import end_reason, end_status

        try:
            yield self
        except BaseException as error:
            try:
                self.end(end_status(error), end_reason(error))
            except Exception as also:  # the worker is gone, say: the error that ended the run is the one to show
                log.warning("the MLflow run %s could not be ended: %s", self.run_id, also)
            raise
        self.end("FINISHED")
