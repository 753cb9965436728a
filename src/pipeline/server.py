"""python -m pipeline.server start|stop|status FOLDER: a group's MLflow tracking server, on PostgreSQL, in one folder.

`start` creates (first time) and starts PostgreSQL on loopback (postgres.py) and `mlflow server` on top of it, with
artifacts proxied by the server into FOLDER/artifacts: clients need nothing but the server's URL. `--auth` turns on
MLflow's basic authentication, the admin being MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (the variables
every MLflow client sends), so the person who starts it can log runs at once. `stop` ends both, leaving nothing
running; the data stays in FOLDER for the next `start`.
"""
import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipeline import postgres
from pipeline.errors import ConfigError
from pipeline.files import write_json

STATE = "server.json"  # what `stop` and `status` need: the server's pid, address, database port
USERNAME, PASSWORD = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
LEAN = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job consumer (GenAI jobs): ~1.5 GB less


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    """Whether an MLflow server answers its (unauthenticated) health check at `url`."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def auth_config(folder: Path, database_uri: str) -> Path:
    """MLflow's basic-auth settings: users and permissions in their own PostgreSQL database; people the admin adds
    may read and log runs in every experiment (a lab's shared experiments), the admin manages them."""
    path = folder / "basic_auth.ini"
    path.write_text("[mlflow]\ndefault_permission = EDIT\n"
                    f"database_uri = {database_uri}\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return path


def secret_key(folder: Path) -> str:
    """The key the auth app signs its forms with: made once, kept (readable by this user only) for restarts."""
    path = folder / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def server_environment(folder: Path, auth: bool, database: str) -> dict[str, str]:
    environment = {**os.environ, **LEAN}
    if auth:
        if not os.environ.get(USERNAME) or not os.environ.get(PASSWORD):
            raise ConfigError(f"--auth: set {USERNAME} and {PASSWORD}: they become the server's admin, and are what "
                              "MLflow clients (run.py) send")
        environment.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_config(folder, database)),
                           MLFLOW_FLASK_SERVER_SECRET_KEY=secret_key(folder),
                           MLFLOW_AUTH_ADMIN_USERNAME=os.environ[USERNAME],
                           MLFLOW_AUTH_ADMIN_PASSWORD=os.environ[PASSWORD])
    return environment


def read_state(folder: Path) -> dict | None:
    path = folder / STATE
    return json.loads(path.read_text()) if path.exists() else None


def start(folder: Path, host: str, port: int, auth: bool, timeout: float = 120.0) -> str:
    """Start PostgreSQL and the MLflow server; return the server's URL once it answers."""
    folder = folder.resolve()
    state = read_state(folder)
    if state and group_alive(state["pid"]):
        raise ConfigError(f"a server of {folder} is already running at {state['url']} (pid {state['pid']}); "
                          f"python -m pipeline.server stop {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    database_port = free_port()
    cluster = postgres.start(folder / "postgres", database_port)
    try:
        # SQLAlchemy's default PostgreSQL driver is psycopg 3; the pinned one is psycopg2
        store, users = (postgres.ensure_database(cluster, name).replace("postgresql://", "postgresql+psycopg2://")
                        for name in ("mlflow", "mlflow_auth"))
        environment = server_environment(folder, auth, users)
        (folder / "artifacts").mkdir(exist_ok=True)
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
                   "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
                   "--host", host, "--port", str(port), "--workers", "1"]
        command += ["--app-name", "basic-auth"] if auth else []
        with open(folder / "server.log", "ab") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment,
                                      cwd=folder, start_new_session=True)  # its own group: stop ends its workers too
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        write_json(folder / STATE, {"pid": server.pid, "url": url, "database_port": database_port, "auth": auth})
        wait_until_it_answers(server, url, folder / "server.log", timeout)
    except BaseException:
        stop(folder)
        raise
    return url


def wait_until_it_answers(server: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not answers(url):
        if server.poll() is not None or time.monotonic() > deadline:
            said = log.read_text(errors="replace").strip().splitlines()[-1:]  # the error itself
            exited = server.poll() is not None
            how = f"exited with status {server.returncode}" if exited else f"did not answer in {timeout:.0f} s"
            raise ConfigError(f"the MLflow server {how}; the end of {log}: {''.join(said)}")
        time.sleep(0.5)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (a zombie does not count: nobody may be left to reap it)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def end_process_group(pgid: int, grace: float = 15.0) -> None:
    """SIGTERM the server's process group (it and its workers), SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)


def stop(folder: Path) -> None:
    """Stop the MLflow server, then PostgreSQL; the data stays."""
    folder = folder.resolve()
    state = read_state(folder)
    if state:
        end_process_group(state["pid"])
        (folder / STATE).unlink()
    postgres.stop(folder / "postgres")


def status(folder: Path) -> str:
    state = read_state(folder.resolve())
    if not state or not group_alive(state["pid"]):
        return f"no server of {folder} is running"
    how = "answering" if answers(state["url"]) else "not answering yet"
    return f"{state['url']} ({how}; pid {state['pid']}; authentication {'on' if state['auth'] else 'off'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.server", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("folder", type=Path, help="where the database, artifacts and logs live")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines (default: loopback)")
    parser.add_argument("--port", type=int, default=5000, help="0: any free port (default: 5000)")
    parser.add_argument("--auth", action="store_true", help=f"basic authentication; admin: {USERNAME}/{PASSWORD}")
    args = parser.parse_args(argv)
    try:
        if args.action == "start":
            url = start(args.folder, args.host, args.port, args.auth)
            print(f"MLflow server on PostgreSQL: {url} (data in {args.folder.resolve()})\n"
                  f"use it: export MLFLOW_TRACKING_URI={url}  (or: python run.py logger=mlflow_server)\n"
                  f"stop it: python -m pipeline.server stop {args.folder}")
        elif args.action == "stop":
            stop(args.folder)
            print(f"stopped the server of {args.folder.resolve()}")
        else:
            print(status(args.folder))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
