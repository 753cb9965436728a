"""No ghost runs: a run whose process died without a word (kill -9, out of memory, power loss) cannot end its
MLflow run, so every run records who runs it (host, pid, the process's start time) and beats a heartbeat; the next
pipeline process that opens the store marks runs whose process is gone KILLED.

On the same host a run is dead when its pid is gone or now belongs to a newer process. A run on another host is
dead when its heartbeat is older than STALE_AFTER (it beats every BEAT_EVERY seconds).
"""
import os
import socket
import threading
import time

from pipeline.files import is_running

HOST, PID, STARTED, HEARTBEAT = "pipeline.host", "pipeline.pid", "pipeline.process_started", "pipeline.heartbeat"
PID_NAMESPACE = "pipeline.pid_namespace"  # containers on one host name see different pids
ERROR = "pipeline.error"  # the first line of what ended a run that did not finish
BEAT_EVERY = 60.0
STALE_AFTER = 600.0


def process_started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if there is no such process.
    Together with the pid it names one process: pids are reused, start times are not. Without /proc (macOS)
    it is "" for any live pid: the pid alone then names the process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        if os.path.exists("/proc/self/stat"):
            return None
    return "" if is_running(pid) else None


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_tags() -> dict[str, str]:
    return {HOST: socket.gethostname(), PID_NAMESPACE: pid_namespace(), PID: str(os.getpid()),
            STARTED: str(process_started(os.getpid())), HEARTBEAT: str(int(time.time()))}


def is_gone(tags: dict[str, str], now: float) -> bool:
    """Whether the process that runs a run with these tags has ended (a run without them is someone else's)."""
    if HOST not in tags or PID not in tags:
        return False
    if tags[HOST] == socket.gethostname() and tags.get(PID_NAMESPACE, "") == pid_namespace():
        return process_started(int(tags[PID])) != tags.get(STARTED)
    return now - float(tags.get(HEARTBEAT, 0)) > STALE_AFTER


def mark_ghosts_killed(client) -> list[str]:
    """Mark every RUNNING run of the store whose process is gone KILLED, saying so in its error tag."""
    now = time.time()
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    if not experiments:
        return []
    ghosts = [run for run in client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=10000)
              if is_gone(run.data.tags, now)]
    for run in ghosts:
        tags = run.data.tags
        client.set_tag(run.info.run_id, ERROR, f"its process (pid {tags[PID]} on {tags[HOST]}) ended without a word "
                       "(killed, out of memory or power loss); marked KILLED when the pipeline next started")
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in ghosts]


class Heartbeat:
    """Refresh a run's heartbeat tag from a daemon thread while the block runs (runs on other hosts are judged by
    it); a with-block."""

    def __init__(self, client, run_id: str, every: float = BEAT_EVERY):
        self.client, self.run_id, self.every = client, run_id, every
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.beat, name=f"heartbeat {run_id}", daemon=True)

    def beat(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                self.client.set_tag(self.run_id, HEARTBEAT, str(int(time.time())))
            except Exception:  # a busy or unreachable store: the next beat tries again
                pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
