"""A local SQLite MLflow store that any number of processes may open at once.

MLflow creates a new store's schema with a dozen alembic migrations (~6 s) in whichever process touches it first;
two processes doing that together corrupt it (`duplicate column name`, a half-migrated file that every later run
refuses). Here every process of the pipeline passes through `ensure_store` first, which, under a file lock beside
the database: builds a new store in a temporary file and renames it into place only when fully migrated (a store
is never seen half-made, even after kill -9), upgrades an older store after copying it to a backup, and turns on
write-ahead logging (readers never block the writer; MLflow itself waits up to 20 s for a busy database).
"""
import fcntl
import functools
import logging
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from pipeline.files import write_atomically

log = logging.getLogger(__name__)

_ready: set[str] = set()  # URIs this process has already ensured


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a local SQLite store; None for anything else (a server, PostgreSQL)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]).resolve()


def artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite store go beside the database, not into whatever folder the run started in."""
    db = sqlite_file(tracking_uri)
    return (db.parent / "mlruns").as_uri() if db is not None else None


@contextmanager
def quiet_migrations():
    """MLflow and alembic announce every migration step at INFO level; a user needs none of it."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextmanager
def locked(db: Path):
    """Hold an exclusive lock on `<db>.lock` (released by the OS if the process dies)."""
    with open(db.with_name(db.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_store(tracking_uri: str) -> None:
    """Make sure the store at `tracking_uri` exists with MLflow's current schema, or that the server there answers
    and accepts this user."""
    if tracking_uri in _ready:
        return
    if tracking_uri.startswith(("http://", "https://")):
        check_server(tracking_uri)
        _ready.add(tracking_uri)
        return
    db = sqlite_file(tracking_uri)
    if db is None:
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with locked(db):
        if not db.exists() or db.stat().st_size == 0:
            create(db, artifact_root(tracking_uri))
        else:
            upgrade_if_old(db)
    _ready.add(tracking_uri)


def check_server(url: str) -> None:
    """One quick request before MLflow's own, which retries a server that is down for minutes and reports a refused
    login as a traceback: say at once, in one line, what is wrong."""
    import base64
    import urllib.error
    import urllib.request

    from pipeline.errors import ConfigError

    request = urllib.request.Request(f"{url.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
        if error.code != 401:
            return  # some other answer: a server is there; MLflow's own request will tell what it wants
        why = (f"refused the credentials of MLFLOW_TRACKING_USERNAME={user}" if user and password else
               "asks for credentials: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
        raise ConfigError(f"the MLflow server at {url} {why}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConfigError(f"no MLflow server answers at {url} ({reason}): start one (python -m pipeline.server start "
                          "FOLDER) or point logger.tracking_uri / MLFLOW_TRACKING_URI at yours") from None


def create(db: Path, artifacts: str | None) -> None:
    """Build the whole store in a part file, renamed into place once complete (files.write_atomically, which also
    removes the part file a killed creator left)."""
    write_atomically(db, functools.partial(build_store, artifacts=artifacts))


def build_store(path: Path, artifacts: str | None) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:
        with quiet_migrations():
            store = SqlAlchemyStore(f"sqlite:///{path}", artifacts)  # migrates, adds the Default experiment
        use_write_ahead_log(store.engine)
        store.engine.dispose()  # the last connection closes: SQLite folds the log into the file
    finally:
        for leftover in (Path(f"{path}-wal"), Path(f"{path}-shm")):
            leftover.unlink(missing_ok=True)


def upgrade_if_old(db: Path) -> None:
    """An existing store from an older MLflow is upgraded once, after a backup copy (migrations are not
    transactional); any store is switched to write-ahead logging if it is not yet."""
    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version, _upgrade_db

    from pipeline.errors import ConfigError, first_line

    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    try:
        current, latest = _get_schema_version(engine), _get_latest_schema_revision()
        if current != latest:
            backup = db.with_name(f"{db.name}.backup-{current}")
            shutil.copyfile(db, backup)
            log.warning("upgrading the MLflow store %s from schema %s to %s (backup: %s)", db, current, latest, backup)
            try:
                with quiet_migrations():
                    _upgrade_db(engine)
            except Exception as error:
                raise ConfigError(f"the MLflow store {db} cannot be upgraded from schema {current} "
                                  f"({first_line(error)}); its copy before the attempt is {backup}") from None
        use_write_ahead_log(engine)
    finally:
        engine.dispose()


def use_write_ahead_log(engine) -> None:
    """WAL lets readers (the MLflow UI, other runs) proceed while one run writes. The switch needs a moment with no
    other connection; if another process holds one, a later start switches it."""
    import sqlalchemy

    try:
        with engine.connect() as connection:
            if connection.exec_driver_sql("PRAGMA journal_mode").scalar() != "wal":
                connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    except sqlalchemy.exc.OperationalError as error:
        log.debug("write-ahead logging not switched on yet: %s", error)
