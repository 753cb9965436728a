"""Command-line error handling: bad input becomes one line on stderr and exit status 2, never a deep traceback."""
import os
import re
import signal
import sys

from hydra.errors import (ConfigCompositionException, InstantiationException, MissingConfigException,
                          OverrideParseException)
from omegaconf.errors import OmegaConfBaseException

from pipeline import tracking
from pipeline.errors import ConfigError


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def describe(error: BaseException) -> str | None:
    """The one-line message for an input error, or None for a bug (which keeps its traceback)."""
    if isinstance(error, ConfigError):
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
        return _first_line(error)
    if isinstance(error, OmegaConfBaseException):
        return _first_line(error)
    return None


class InputError(SystemExit):
    """Bad input found inside a job. A SystemExit, so Hydra passes it through without its multi-line report,
    and a sweep (also across joblib workers) stops with the one line."""


def run_job(cfg):
    """The body of run.py's @hydra.main: run the experiment and return the sweep objective (for sweepers),
    turning input errors into InputError."""
    from hydra.core.hydra_config import HydraConfig

    from pipeline.train import run

    cfg.paths.output_dir = HydraConfig.get().runtime.output_dir  # this job's own folder
    try:
        return run(cfg).get(cfg.sweep.objective, float("nan"))
    except Exception as error:
        message = describe(error)
        if message is None:
            raise
        raise InputError(message) from None


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def exit_with_one_line(error: BaseException, wants_traceback: bool) -> None:
    """Print an input error as one line and exit with status 2; re-raise a bug (or anything, when the user
    asked for tracebacks) as it is."""
    message = None if wants_traceback else describe(error)
    if message is None:
        raise error
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def with_clear_errors(hydra_main) -> None:
    """Run a @hydra.main function; turn input errors into one line and end any open sweep run on failure."""
    user_wants_traceback = "HYDRA_FULL_ERROR" in os.environ
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # `kill` ends runs like Ctrl-C does
    try:
        hydra_main()
    except InputError as error:
        tracking.end_open_sweep("FAILED")
        print(f"error: {error.code}", file=sys.stderr)
        sys.exit(2)
    except SystemExit as stop:
        if stop.code not in (0, None):
            tracking.end_open_sweep("KILLED")
        raise
    except BaseException as error:
        tracking.end_open_sweep(tracking.end_status(error))
        exit_with_one_line(error, user_wants_traceback)


def run_stage(stage) -> None:
    """Run a DVC stage, `stage(cfg)` with the config from params.yaml, with run.py's error handling: an input
    error is one line and exit status 2."""
    from pipeline.stages import params

    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        stage(params.load())
    except Exception as error:
        exit_with_one_line(error, "HYDRA_FULL_ERROR" in os.environ)
