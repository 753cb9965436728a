"""The tracking store survives concurrency: many processes starting at once on a new SQLite file all get there."""
import os
import subprocess
import sys

from conftest import ROOT, all_runs

TINY = ["data=xor", "trainer.max_epochs=1", "callbacks=none"]


def test_four_runs_started_together_on_a_new_store_all_finish(tmp_path):  # a race: a failure shows only sometimes
    uri = f"sqlite:///{tmp_path}/mlflow.db"  # does not exist yet: all four race to create it
    processes = [subprocess.Popen([sys.executable, str(ROOT / "run.py"), *TINY, f"seed={index}",
                                   f"hydra.run.dir={tmp_path}/run{index}"],
                                  cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for index in range(4)]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, "\n".join(e[-2000:] for e in errors)
    assert not any("Traceback" in error for error in errors)
    _, runs = all_runs(uri)
    assert sorted(run.data.params["seed"] for run in runs) == ["0", "1", "2", "3"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    assert not list(tmp_path.glob(".mlflow.db*.part"))  # no half-made copy of the store is left beside it


def test_a_store_in_wal_mode_after_the_first_run(tmp_path):
    import sqlite3

    from pipeline.store import ensure_store

    db = tmp_path / "nested" / "mlflow.db"
    ensure_store(f"sqlite:///{db}")
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not list(db.parent.glob("*.part"))
