"""Files that appear whole or not at all. A write goes to `.<name>.<pid>.part` beside its target and is renamed
into place; what a killed process (kill -9, power loss) left behind is removed before the next write of that file,
unless the pid in its name is still running here (then it is a concurrent write, and is left alone)."""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_leftovers(folder: Path, pattern: str) -> None:
    """Delete the files and folders in `folder` whose name matches `pattern` (its one group: the writer's pid)
    when that process is gone."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        match = re.fullmatch(pattern, entry.name)
        if not match or is_running(int(match[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def write_atomically(path: Path, write) -> Path:
    """`write(partial_path)` writes the file; it then replaces `path` in one rename, so a killed process never
    leaves a half-written file under the real name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent, rf"\.{re.escape(path.name)}\.(\d+)\.part")
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def scratch_folder(parent: Path, purpose: str) -> tempfile.TemporaryDirectory:
    """A temporary folder `.<purpose>-<pid>-<random>` in `parent` (on the same disk, so its content can be
    renamed into place), after removing those of processes that are gone."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(parent, rf"\.{re.escape(purpose)}-(\d+)-.+")
    return tempfile.TemporaryDirectory(dir=parent, prefix=f".{purpose}-{os.getpid()}-")


def write_json(path: Path, values) -> Path:
    """`values` as indented JSON, written atomically."""
    return write_atomically(path, lambda partial: partial.write_text(json.dumps(values, indent=2) + "\n"))
