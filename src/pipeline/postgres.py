"""A PostgreSQL cluster in a folder of the user's choice, for a group's MLflow server (server.py).

It listens on 127.0.0.1 only, with trust authentication: the MLflow server on the same machine is its one client,
and people reach runs through that server. PostgreSQL refuses to run as root, so as root the cluster belongs to
the `postgres` user that Debian's package creates (the commands run through `runuser`).
"""
import glob
import os
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import ConfigError

SUPERUSER = "postgres"
INSTALL_HINT = "install PostgreSQL (Debian: apt-get install postgresql) or put its bin folder on PATH"


def binary(name: str) -> str:
    """A PostgreSQL program: from PATH, else from the newest Debian install (/usr/lib/postgresql/<version>/bin,
    which the package does not put on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0)
    if not versions:
        raise ConfigError(f"PostgreSQL's {name} was not found: {INSTALL_HINT}")
    return versions[-1]


def as_owner(command: list[str]) -> list[str]:
    """The command as the cluster's owner: this user, or `postgres` when this is root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", SUPERUSER, "--", *command]


def give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, SUPERUSER)


def run(command: list[str], what: str) -> None:
    """Run a PostgreSQL command; its own error output, in one line, if it fails."""
    result = subprocess.run(as_owner(command), capture_output=True, text=True)
    if result.returncode != 0:
        said = " ".join((result.stderr or result.stdout).split())[:500]
        raise ConfigError(f"PostgreSQL could not {what}: {said}")


def start(folder: Path, port: int) -> str:
    """Create the cluster in `folder` if it is new, start it on 127.0.0.1:`port`; return its URI (no database)."""
    folder.mkdir(parents=True, exist_ok=True)
    give_to_owner(folder)
    if subprocess.run(as_owner(["test", "-w", str(folder)])).returncode != 0:
        raise ConfigError(f"PostgreSQL runs as the {SUPERUSER} user, who cannot reach {folder}: choose a folder whose "
                          "parents others may enter (not under /root or a private temporary folder)")
    if not (folder / "PG_VERSION").exists():
        run([binary("initdb"), "-D", str(folder), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"],
            f"create a cluster in {folder}")
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port}"
    run([binary("pg_ctl"), "-D", str(folder), "-l", str(folder / "postgres.log"), "-o", options, "-w", "start"],
        f"start on port {port} (its log: {folder / 'postgres.log'})")
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}"


def stop(folder: Path) -> None:
    """Stop the cluster (fast: open connections are closed, nothing committed is lost); nothing if not running."""
    if (folder / "postmaster.pid").exists():
        run([binary("pg_ctl"), "-D", str(folder), "-m", "fast", "-w", "stop"], f"stop the cluster in {folder}")


def ensure_database(server_uri: str, name: str) -> str:
    """Create database `name` if it does not exist; return its URI."""
    import psycopg2

    connection = psycopg2.connect(f"{server_uri}/postgres")
    try:
        connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cursor.fetchone() is None:
                cursor.execute(f'CREATE DATABASE "{name}"')
    finally:
        connection.close()
    return f"{server_uri}/{name}"
