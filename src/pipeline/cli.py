"""Command-line error handling: bad input becomes one line on stderr and exit status 2, never a deep traceback."""
import atexit
import logging
import os
import re
import signal
import sys
import threading

from hydra.errors import (ConfigCompositionException, InstantiationException, MissingConfigException,
                          OverrideParseException)
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import ConfigError, TrainingError, first_line


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe(error: BaseException) -> str | None:
    """The one-line message for an input error, or None for a bug (which keeps its traceback)."""
    if isinstance(error, (ConfigError, TrainingError)):
        return str(error)
    if isinstance(error, MissingConfigException) and error.options is not None:
        missing = error.missing_cfg_file or ""
        group, _, option = missing.rpartition("/")
        choices = ", ".join(sorted(error.options))
        return f"{group}={option}: no such option in group '{group}'; choose one of: {choices}"
    if isinstance(error, ConfigCompositionException):
        text = str(error)
        match = re.search(r"Could not override '([^']+)'", text)
        if match:
            key = match.group(1)
            added = re.search(r"use \+(\S+)", text)
            given = added.group(1) if added else key
            parent, _, leaf = key.rpartition(".")
            where = f"'{parent}'" if parent else "the top level"
            return (f"{given}: unknown key '{leaf}' in {where}; `python run.py --cfg job` lists the keys, "
                    f"+{given} would add a new one")
        return _first_line(text)
    if isinstance(error, OverrideParseException):
        lines = [line.strip() for line in str(error.message).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 and not lines[1].startswith("See ") else lines[0] if lines else ""
        return (f"cannot parse override '{error.override}' ({reason}): "
                "write group=option, key=value, +new_key=value or a sweep key=a,b")
    if isinstance(error, InstantiationException):
        cause = error.__cause__
        if isinstance(cause, (ConfigError, ValueError, TypeError)):
            match = re.search(r"full_key: (\S+)", str(error))
            key, reason = match.group(1) if match else "config", _first_line(cause)
            return reason if reason.startswith(key) else f"{key}: {reason}"
        where = _first_line(error).rstrip(":")
        return f"{where}: {type(cause).__name__}: {_first_line(cause)}" if cause is not None else where
    if isinstance(error, OmegaConfBaseException):
        return _first_line(error)
    if isinstance(error, ValueError) and str(error).startswith("Only one of --run, --multirun"):  # Hydra's flags
        return (f"{error}: leave out -m to print a sweep's config (python run.py <overrides> --cfg job, or --cfg "
                "hydra for the launcher's settings)")
    return None


def one_line(error: BaseException) -> str:
    """What went wrong, in one line, for any error: the message of a known one, else the type and first line of
    its root cause (a failed job in a sweep's report, a failed run's error tag)."""
    return describe(error) or f"{type(error).__name__}: {first_line(error)}"


class SingleRunError(SystemExit):
    """The error of a single run (not a sweep), carried past Hydra as a SystemExit, which Hydra lets through
    without printing its own report first; with_clear_errors unpacks it."""

    def __init__(self, error: Exception):
        super().__init__(1)
        self.error = error


def run_job(cfg):
    """The body of run.py's @hydra.main: run the experiment in this job's own folder and return its metrics
    (for sweepers). Inside a sweep an error ends only this job: the sweeper records it and goes on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from pipeline import collector, distributed, remote_tracking, tracking

    if tracking.uses_mlflow(cfg) and distributed.is_leader():  # MLflow's import overlaps torch's, just below
        remote_tracking.open_store(cfg.logger.tracking_uri)
    run = collector.import_module("pipeline.train").run

    hydra_cfg = HydraConfig.get()
    cfg.paths.output_dir = hydra_cfg.runtime.output_dir
    try:
        return run(cfg)  # every metric: a search reads its objectives from them
    except Exception as error:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        raise SingleRunError(error) from None
    finally:  # a launcher's worker process may be ended without its exit (launcher_workers.py): nothing stays buffered
        sys.stdout.flush()
        sys.stderr.flush()


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def exit_with_one_line(error: BaseException, wants_traceback: bool) -> None:
    """Print a known error as one line and exit (status 1 for a failed run, 2 for refused input); re-raise a bug
    (or anything, when the user asked for tracebacks) as it is."""
    message = None if wants_traceback else describe(error)
    if message is None:
        raise error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1 if isinstance(error, TrainingError) else 2)


def stopped() -> None:
    """Ctrl-C or SIGTERM: the runs are already marked KILLED; say so in one line and exit as shells expect."""
    print("stopped: the interrupted runs are marked KILLED in MLflow", file=sys.stderr)
    sys.exit(130)


def with_clear_errors(hydra_main) -> None:
    """Run a @hydra.main function; turn known errors into one line, and `kill` (SIGTERM) into Ctrl-C."""
    user_wants_traceback = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` ends runs like Ctrl-C does
    try:
        hydra_main()
    except KeyboardInterrupt:
        stopped()
    except SingleRunError as failed:
        exit_with_one_line(failed.error, user_wants_traceback)
    except Exception as error:
        exit_with_one_line(error, user_wants_traceback)


def run_stage(stage) -> None:
    """Run a DVC stage, `stage(cfg)` with the config from params.yaml, with run.py's error handling."""
    from pipeline.stages import params

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        stage(params.load())
    except KeyboardInterrupt:
        stopped()
    except Exception as error:
        exit_with_one_line(error, "HYDRA_FULL_ERROR" in os.environ)


def exit_code(ending: SystemExit) -> int:
    """The status the interpreter would exit with for this SystemExit (a message: printed, status 1)."""
    if ending.code is None or isinstance(ending.code, int):
        return ending.code or 0
    print(ending.code, file=sys.stderr)
    return 1


def as_main_process(entry_point, *args) -> None:
    """Run a command's entry point, then end the process as the interpreter would, minus its teardown of every
    module and object (measured ~1 s with torch, Lightning and MLflow loaded, paid after the run's work is done):
    the exit handlers run and output and logs are flushed first, then the process ends with the same status. A
    bug's traceback, other threads still working, or a profiler or coverage tool watching (they write their
    results at teardown) take the ordinary way out. Only for a process's __main__."""
    try:
        entry_point(*args)
        code = 0
    except SystemExit as ending:
        code = exit_code(ending)
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if watched or any(thread.is_alive() and not thread.daemon for thread in threading.enumerate()
                      if thread is not threading.main_thread()):
        sys.exit(code)
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
