"""The second process that does a training process's MLflow work (started by remote_tracking.py).

Importing MLflow and opening its store cost ~1.6 s, and exporting the model ~0.6 s: here they run on another core
while the trainer imports torch and trains, instead of in front of its first step. Commands arrive as pickled
(wait, name, args) tuples; a command that waits gets ("ok", value) or ("error", exception) back. A command that
does not wait and fails holds its error for the next one that does, which fails the run with it.

When the trainer's end of the pipe closes while a run is open, the trainer died without a word (kill -9, out of
memory): this process, which ignores Ctrl-C and SIGTERM so as to outlive it, marks the run KILLED at once.
"""
import logging
import os
import pickle
import signal
import sys
import threading
from pathlib import Path

from pipeline import collector, liveness, tracking

log = logging.getLogger("pipeline.tracking")


class Worker:
    """One open store, at most one active run (the trainer's jobs run one after another), and the parent run of the
    sweep the trainer runs, if it runs one (its records: search/parent_records.py)."""

    def __init__(self, trainer_pid: int, preload: bool = True):
        self.trainer_pid, self.preload = trainer_pid, preload
        self.client = None
        self.heartbeat: liveness.Heartbeat | None = None
        self.failed: BaseException | None = None  # the first error of a command nobody waited for
        self.preloading: threading.Thread | None = None
        self.sweep: liveness.Heartbeat | None = None  # the open sweep parent's heartbeat (its run_id)

    # --- commands ---------------------------------------------------------------------------------------------
    def open(self, tracking_uri: str) -> None:
        """Make the store ready (and its ghosts KILLED), then import what exporting a model needs, in the
        background: the trainer is still importing torch on the other core."""
        self.client = tracking.client(tracking_uri)
        if self.preload and self.preloading is None:
            self.preloading = threading.Thread(target=preload_then_collect, name="preload", daemon=True)
            self.preloading.start()

    def import_mlflow(self) -> None:
        """Before the config is known (remote_tracking.start_early)."""
        import mlflow  # noqa: F401

    def start_run(self, tracking_uri: str, experiment_name: str, run_name: str, tags: dict,
                  parent_run_id: str | None) -> str:
        import mlflow

        self.open(tracking_uri)
        experiment = (self.client.get_run(parent_run_id).info.experiment_id if parent_run_id
                      else tracking.experiment_id(tracking_uri, experiment_name))
        if parent_run_id:
            tags = {**tags, "mlflow.parentRunId": parent_run_id}
        return self.started(mlflow.start_run(experiment_id=experiment, run_name=run_name, tags=tags))

    def reopen(self, tracking_uri: str, run_id: str, parent_run_id: str | None, process_tags: dict) -> str:
        self.open(tracking_uri)
        if parent_run_id:  # a job of a new sweep continuing its run: it belongs to this sweep now
            self.client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
        return self.started(tracking.reopen(self.client, run_id, process_tags))

    def started(self, run) -> str:
        self.heartbeat = liveness.Heartbeat(self.client, run.info.run_id).__enter__()
        return run.info.run_id

    def open_sweep(self, tracking_uri: str, *args) -> str:
        """A sweep's parent run (parent_records.open_parent's arguments after the client), beating until closed."""
        from pipeline.search import parent_records

        self.open(tracking_uri)
        run_id = parent_records.open_parent(self.client, tracking_uri, *args)
        self.sweep = liveness.Heartbeat(self.client, run_id).__enter__()
        threading.Thread(target=parent_records.prepare_summary, name="summary imports", daemon=True).start()
        return run_id

    def close_sweep(self, failures: list, status: str | None = None, reason: str | None = None) -> str:
        """Summarise and end the sweep's parent run (parent_records.close_parent); returns the summary."""
        from pipeline.search import parent_records

        heartbeat, self.sweep = self.sweep, None
        heartbeat.__exit__()
        return parent_records.close_parent(self.client, heartbeat.run_id, failures, status, reason)

    def on_sweep(self, action: str, *args):
        """Another record of the sweep's (parent_records.`action`, given the client first)."""
        from pipeline.search import parent_records

        return getattr(parent_records, action)(self.client, *args)

    def log_params(self, params: dict[str, str]) -> None:
        import mlflow

        items = list(params.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[start : start + 100]))

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id(), metrics=[Metric(key, value, timestamp_ms, step)
                                                      for key, value in metrics.items()])

    def written(self) -> None:
        """Nothing: its answer says every command sent before it is done (or brings the error of one that failed)."""

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id(), text, artifact_file)

    def log_dict(self, values: dict, artifact_file: str) -> None:
        self.client.log_dict(self.run_id(), values, artifact_file)

    def log_files(self, paths: list[str], artifact_dir: str) -> None:
        tracking.log_files(self.run_id(), paths, artifact_dir, self.client)

    def log_model(self, model, example_input) -> None:
        tracking.log_model(model, example_input)

    def log_saved_model(self, path: str) -> None:
        """The model and example input the trainer saved to `path` (removed once read), logged as the run's
        MLflow Model."""
        self.preloading.join()
        import torch

        try:
            saved = torch.load(path, weights_only=False)
        finally:
            Path(path).unlink(missing_ok=True)
        self.log_model(saved["model"], saved["example"])

    def end_run(self, status: str, reason: str | None = None) -> None:
        """End the active run; an error held from a command nobody waited for fails it (and is raised)."""
        import mlflow

        failed, self.failed = self.failed, None
        if mlflow.active_run() is None:  # the run never started (its start failed, and said so)
            if failed is not None:
                raise failed
            return
        if failed is not None and status == "FINISHED":
            status, reason = "FAILED", tracking.end_reason(failed)
        try:
            if reason:
                mlflow.set_tag(liveness.ERROR, reason)
            mlflow.end_run(status)
        finally:
            if self.heartbeat is not None:
                self.heartbeat.__exit__()
                self.heartbeat = None
        if failed is not None:
            raise failed

    # --- the trainer is gone ------------------------------------------------------------------------------
    def trainer_gone(self) -> None:
        """The pipe closed: if a run is still open, its trainer died without ending it; unless another process
        has taken the run on meanwhile (resume=auto soon after a kill -9: this process was still writing). A sweep
        still open ends KILLED with its summary."""
        import mlflow

        died = (f"its process (pid {self.trainer_pid}) ended without a word (killed or out of memory); marked KILLED "
                "by its tracking process")
        if mlflow.active_run() is not None:
            run = self.client.get_run(self.run_id())
            if run.info.status == "RUNNING" and run.data.tags.get(liveness.PID) == str(self.trainer_pid):
                mlflow.set_tag(liveness.ERROR, died)
                self.end_run("KILLED")
        if self.sweep is not None:  # its children's tags say: its sweep was killed: ...
            self.close_sweep([], "KILLED", f"killed: {died}")

    def unreadable(self, error: Exception) -> None:
        """A command arrived whole but could not be rebuilt here (say, an object of a class this process cannot
        import): what follows it in the pipe cannot be read either, so the run ends FAILED, saying why, and the
        trainer's next command finds this process gone."""
        import mlflow

        reason = tracking.end_reason(error)
        log.error("the MLflow tracking process could not read a command: %s", reason)
        if mlflow.active_run() is not None:
            mlflow.set_tag(liveness.ERROR, f"its tracking process could not read a command from the trainer ({reason});"
                                           " the run's records stop there")
            self.end_run("FAILED")

    def run_id(self) -> str:
        import mlflow

        return mlflow.active_run().info.run_id

    def handle(self, wait: bool, name: str, args: tuple):
        """Run one command: ("ok", result) or ("error", exception) for one that waits (an error held from one that
        did not comes first), None for one that does not (its error is held)."""
        if wait and self.failed is not None and name != "end_run":
            answer, self.failed = ("error", self.failed), None
            return answer
        try:
            answer = ("ok", getattr(self, name)(*args))
        except Exception as error:
            answer = ("error", error)
        if wait:
            return answer
        if answer[0] == "error" and self.failed is None:
            if name != "open":  # a store that cannot open is the run's one-line error when the run starts
                log.warning("MLflow: %s failed: %s", name, tracking.end_reason(answer[1]))
            self.failed = answer[1]
        return None


def preload() -> None:
    """What the model export at the run's end needs (torch, what torch.export loads on first use, MLflow's pytorch
    flavour: ~2 s), imported while the trainer still imports torch. The flavour would import Lightning too (2 s
    more), only for its autologging, which it skips when that import fails: nothing trains here, so Lightning is kept
    out while the flavour loads (a model class that needs it imports it later). One thread: the trainer has the
    other cores."""
    import torch

    kept_out = "pytorch_lightning" not in sys.modules
    if kept_out:
        sys.modules["pytorch_lightning"] = None  # an import of it raises ImportError
    try:
        import mlflow.pytorch  # noqa: F401
    finally:
        if kept_out:
            del sys.modules["pytorch_lightning"]
    import torch._dynamo  # noqa: F401
    import torch.export  # noqa: F401
    import torch.export._trace  # noqa: F401  (torch.export.export imports it on its first call: ~0.6 s)

    torch.set_num_threads(1)
    map_installed_packages()


def map_installed_packages() -> None:
    """Saving a model, MLflow checks its requirements against the installed packages, and first maps every installed
    distribution to its modules (~0.26 s, once per process): mapped here, ahead. The function is MLflow's private
    one (it has no public way to do it ahead); if it is gone, the save maps them as before."""
    try:
        from mlflow.utils.requirements_utils import _init_packages_to_modules_map
    except ImportError:
        return
    _init_packages_to_modules_map()


def preload_then_collect() -> None:
    """preload(), then the garbage collector on again (main() paused it), with everything imported so far frozen."""
    try:
        preload()
    finally:
        collector.resume()


def serve(commands, replies, worker: Worker) -> None:
    """Answer commands until the trainer is gone: its pipe closed, a message cut off by its death, or no one left to
    read an answer (killed while it waited for one)."""
    while True:
        try:
            wait, name, args = pickle.load(commands)
        except (EOFError, pickle.UnpicklingError):  # the pipe closed, or a message cut off by the trainer's death
            break
        except Exception as error:  # a whole message this process cannot rebuild: the trainer is alive, the run fails
            worker.unreadable(error)
            return
        answer = worker.handle(wait, name, args)
        if wait and not send(replies, answer):
            break
    worker.trainer_gone()


def send(replies, answer) -> bool:
    """Write an answer; False when the trainer is no longer there to read it."""
    try:
        data = pickle.dumps(answer)
    except Exception:  # an exception that does not pickle arrives as its type and first line
        data = pickle.dumps(("error", RuntimeError(tracking.end_reason(answer[1]))))
    try:
        replies.write(data)
        replies.flush()
    except OSError:  # BrokenPipeError
        return False
    return True


def main() -> None:
    commands_fd, replies_fd, trainer_pid = (int(value) for value in sys.argv[1:4])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the trainer's to handle; it then ends the run
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.nice(19)  # the trainer's threads come first; what the trainer waits for runs while it waits
    collector.pause()  # imports (MLflow, then preload) ahead: collected from the end of preload on
    status = 0
    try:
        serve(os.fdopen(commands_fd, "rb"), os.fdopen(replies_fd, "wb"), Worker(trainer_pid))
    except BaseException:  # the run stays RUNNING: the next start against the store marks it KILLED (a ghost)
        log.exception("the MLflow tracking process failed")
        status = 1
    logging.shutdown()
    # Everything is written. Skip the interpreter's teardown (~1 s of MLflow's and torch's modules), and with it
    # MLflow's exit hook, which would end a run still open as FINISHED.
    os._exit(status)


if __name__ == "__main__":
    main()
