"""`python run.py -m ...`: one MLflow parent run per sweep, one child per job, a summary on the parent."""
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest

from conftest import ROOT, all_runs, run_py_reporting_at_exit, run_python

SWEEP = ["-m", "optimizer=sgd,adam", "regularization=none,dropout", "trainer.max_epochs=2"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_makes_a_parent_with_four_named_children_and_a_summary(run_py, tracking_uri, launcher):
    # joblib runs jobs in parallel processes on a brand-new database: the schema must be created once first.
    result = run_py(*SWEEP, f"hydra/launcher={launcher}")
    assert result.returncode == 0, result.stderr[-3000:]

    client, runs = all_runs(tracking_uri)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    assert {c.info.run_name for c in children} == {
        f"optimizer={o} regularization={r}" for o in ("sgd", "adam") for r in ("none", "dropout")}
    for child in children:  # each job's own line, though joblib's workers are ended without their exit
        assert f"{child.info.run_name}: test/acc=" in result.stdout, result.stdout[-3000:]

    best = max(children, key=lambda c: c.data.metrics["val/acc_best"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/acc_best"] == pytest.approx(best.data.metrics["val/acc_best"])
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")
    for child in children:
        assert child.info.run_name in summary and child.info.run_id in summary
    assert f"{best.info.run_name} (best)" in summary
    # the convergence comparison: one PNG with every child's validation curves
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id, "sweep")]
    assert "sweep/curves.png" in artifacts
    png = client.download_artifacts(parent.info.run_id, "sweep/curves.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("launcher", ["basic", "joblib"])  # joblib: checked in its workers (job_checks.py)
def test_every_job_is_checked_before_the_first_one_trains(run_py, tracking_uri, tmp_path, launcher):
    result = run_py("-m", "regularization.dropout=0.2,1.5", "trainer.max_epochs=1", f"hydra/launcher={launcher}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: sweep job 1 (regularization.dropout=1.5 trainer.max_epochs=1): regularization.dropout=1.5 is "
        "invalid: must be a number in [0, 1); nothing was run"]
    _, runs = all_runs(tracking_uri)
    assert runs == [] and not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_job_that_fails_while_running_is_recorded_and_the_sweep_goes_on(run_py, tracking_uri, launcher):
    # lr=1e6 diverges at once (a run-time failure no check can foresee); the other job must still run
    result = run_py("-m", "optimizer=sgd", "optimizer.lr=1000000.0,0.05", "trainer.max_epochs=2", f"hydra/launcher={launcher}")
    assert result.returncode == 0, result.stderr[-3000:]
    failed_lines = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed_lines) == 1 and "optimizer.lr=1000000.0" in failed_lines[0] and "diverged" in failed_lines[0]
    assert "Traceback" not in result.stderr

    _, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    statuses = {r.info.run_name: r.info.status for r in runs if r is not parent}
    assert statuses == {"optimizer.lr=1000000.0": "FAILED", "optimizer.lr=0.05": "FINISHED"}
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/failed"] == 1
    summary = mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")
    assert "optimizer.lr=0.05 (best)" in summary
    assert "Failed jobs (1)" in summary and "training diverged" in summary


def test_a_sweep_whose_jobs_all_fail_exits_non_zero_with_a_failed_parent(run_py, tracking_uri):
    result = run_py("-m", "optimizer=sgd", "optimizer.lr=1e6,1e7", "trainer.max_epochs=2")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len([line for line in lines if line.startswith("failed: ")]) == 2
    assert lines[-1] == "error: all 2 jobs of the sweep failed (their errors are above and in MLflow)"
    _, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed"] == 2
    assert mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md").count("training diverged") >= 2


def test_the_tasks_one_declaration_of_best_drives_checkpoint_and_ranking(run_py, tracking_uri, compose_config):
    cfg = compose_config("task.monitor=val/f1_macro")
    assert cfg.callbacks.model_checkpoint.monitor == "val/f1_macro" and cfg.callbacks.model_checkpoint.mode == "max"
    result = run_py("-m", "optimizer.lr=0.001,0.01", "trainer.max_epochs=2", "task.monitor=val/f1_macro")
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    best = max(children, key=lambda c: c.data.metrics["val/f1_macro_best"])
    assert parent.data.tags["best_run_id"] == best.info.run_id and "best/val/f1_macro_best" in parent.data.metrics
    refused = run_py("task.monitor=val/loss", "task.mode=min")
    assert refused.returncode == 2
    assert "task.monitor=val/loss with task.mode=min" in refused.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["optimizer.lr,model.hidden", "sqlite:////tmp/a b/mlflow.db", "it's [1, 2]", "a\\b",
                                   "ends\\", "x\\'y"])
def test_a_value_handed_to_jobs_reaches_their_composed_config_unchanged(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from pipeline.search.job_environment import job_environment

    config = OmegaConf.create({"hydra": {"overrides": {"hydra": ["hydra.verbose=false"]}}})
    with job_environment(config, {"PIPELINE_TEST_VALUE": value}):
        (added,) = config.hydra.overrides.hydra[1:]
        parsed = OverridesParser.create().parse_override(added)
        assert parsed.key_or_group == "hydra.job.env_set.PIPELINE_TEST_VALUE" and parsed.value() == value
    assert list(config.hydra.overrides.hydra) == ["hydra.verbose=false"]  # taken back when the sweep ends


def slow_to_exit(_) -> int:
    """A task that leaves its worker process 60 s of exit work (as a worker that imported torch and MLflow has
    teardown to do), and returns the worker's pid."""
    import atexit
    import os
    import time

    atexit.register(time.sleep, 60)
    return os.getpid()


def test_a_sweep_ends_the_joblib_workers_without_waiting_for_their_exit():
    import os
    import threading

    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    from joblib import Parallel, delayed

    from pipeline.search.launcher_workers import stop_workers

    pids = set(Parallel(n_jobs=2, backend="loky")(delayed(slow_to_exit)(index) for index in range(4)))
    stopping = threading.Thread(target=stop_workers, args=(JoblibLauncher(n_jobs=2),))
    stopping.start()
    stopping.join(timeout=30)  # waiting for the workers' own exit would take 60 s
    assert not stopping.is_alive()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    stop_workers(object())  # any other launcher: nothing to do


def test_the_joblib_launchers_workers_start_with_what_every_job_imports_already_imported():
    """Forked from one warm process (launcher_workers.fork_from_warm_process), not started bare: the first job in
    each worker finds torch, Lightning, MLflow and the pipeline imported, and frozen out of the collector's passes.
    In a process of its own: the start method it sets is loky's for the whole process."""
    in_sweeping_process, *workers = run_python("""
        import sys

        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
        from joblib import Parallel, delayed

        from pipeline.search.launcher_workers import fork_from_warm_process, stop_workers


        def state_at_first_job():
            import gc
            import sys

            return all(name in sys.modules for name in ("pipeline.train", "mlflow.pytorch")), gc.get_freeze_count()


        fork_from_warm_process(JoblibLauncher(n_jobs=2))
        found = Parallel(n_jobs=2, backend="loky")(delayed(state_at_first_job)() for _ in range(2))
        stop_workers(JoblibLauncher(n_jobs=2))
        print("pipeline.train" in sys.modules, *(value for pair in found for value in pair))
    """)
    assert in_sweeping_process == "False"  # imported by the process the workers are forked from, not here
    assert workers[0::2] == ["True", "True"]
    assert all(int(count) > 200_000 for count in workers[1::2])


def test_the_process_joblib_workers_are_forked_from_never_touches_cuda():
    """CUDA set up before a fork cannot be used in the forked child: what the warm process imports
    (search/worker_imports.py) must not ask torch.cuda anything; the jobs find their GPU themselves."""
    asked = run_python("""
        import torch

        asked = []
        for name in ("is_available", "device_count", "init", "current_device", "get_device_properties",
                     "get_device_capability", "is_bf16_supported", "set_device", "_lazy_init"):
            setattr(torch.cuda, name, lambda *args, name=name, **kwargs: asked.append(name))

        import pipeline.search.worker_imports  # noqa: F401

        print(asked)
    """)
    assert asked == ["[]"]


def test_a_stopped_sweep_ends_a_child_whose_own_process_tags_it_at_the_same_moment(tracking_uri):
    """Ctrl-C reaches the sweep and its running job together: both write the child's `pipeline.error` tag, and
    MLflow refuses the second insert (seen in CI: UNIQUE constraint failed). The sweep still ends the child, and
    the child keeps its own process's reason."""
    from mlflow.exceptions import MlflowException

    from pipeline import liveness
    from pipeline.search.parent_records import end_running_children

    client, _ = all_runs(tracking_uri)
    experiment = client.create_experiment("race")
    parent = client.create_run(experiment).info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id

    class ChildTagsFirst:
        """The store as the sweep's process sees it while the child's process wins the race for the tag."""

        def __getattr__(self, name):
            return getattr(client, name)

        def set_tag(self, run_id, key, value):
            client.set_tag(run_id, key, "stopped (Ctrl-C or SIGTERM)")  # the child's own process, first
            raise MlflowException("UNIQUE constraint failed: tags.key, tags.run_uuid")

    end_running_children(ChildTagsFirst(), parent, "KILLED", "stopped (Ctrl-C or SIGTERM)")
    ended = client.get_run(child)
    assert ended.info.status == "KILLED"
    assert ended.data.tags[liveness.ERROR] == "stopped (Ctrl-C or SIGTERM)"


def test_a_parents_children_are_read_past_one_page_and_a_trial_found_by_its_tag(tracking_uri):
    """One MLflow search returns at most a page of runs (1000 by default): a sweep with more children than that
    must still summarise and end them all; a search's verdict lands on the trial's own run."""
    from pipeline.search.parent_records import children_of, mark_child

    client, _ = all_runs(tracking_uri)
    experiment = client.create_experiment("pages")
    parent = client.create_run(experiment).info.run_id
    children = [client.create_run(experiment, start_time=1000 + number,
                                  tags={"mlflow.parentRunId": parent, "search.trial": str(number)}).info.run_id
                for number in range(5)]
    client.create_run(experiment)  # not a child
    assert [run.info.run_id for run in children_of(client, parent, page_size=2)] == children
    assert [run.info.run_id for run in children_of(client, parent, only="tags.`search.trial` = '3'")] == [children[3]]
    mark_child(client, parent, 3, "PRUNED")
    assert [run.data.tags.get("search.state") for run in children_of(client, parent)] == [None] * 3 + ["PRUNED", None]


def test_a_sequential_sweep_leaves_mlflow_to_its_tracking_process(tmp_path, tracking_uri):
    """The parent run's records are the tracking process's (sweep_parent_run.py): the sweeping process, which runs
    the jobs, never imports MLflow, so its job checks import torch without waiting for it."""
    (imported,) = run_py_reporting_at_exit(tmp_path, "'mlflow' in sys.modules", "-m", "optimizer.lr=0.001,0.002",
                                           "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/sweep")
    assert imported == "False"
    _, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/children"] == 2
    assert {run.data.tags.get("mlflow.parentRunId") for run in runs if run is not parent} == {parent.info.run_id}


def test_a_sweep_killed_without_a_word_is_ended_killed_by_its_tracking_process(tmp_path, tracking_uri):
    """kill -9 (or the OOM killer) of the sweeping process alone: its tracking process outlives it and ends the
    running child and the parent KILLED, saying so, with the parent's summary; nothing is left RUNNING."""
    from pipeline import liveness

    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "-m", "optimizer.lr=0.001,0.002",
                                "trainer.max_epochs=10000", f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while len(all_runs(tracking_uri)[1]) < 2:  # the parent and the first child, training
            assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
            time.sleep(0.2)
        process.kill()
        process.wait()
        while any(run.info.status == "RUNNING" for run in all_runs(tracking_uri)[1]):
            assert time.time() < deadline + 60, "runs left RUNNING after the sweep was killed"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # what is left of the group
    client, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    (child,) = [run for run in runs if run is not parent]
    assert parent.info.status == "KILLED" and child.info.status == "KILLED"
    assert parent.data.tags[liveness.ERROR].startswith(f"killed: its process (pid {process.pid}) ended without a word")
    assert "ended without a word" in child.data.tags[liveness.ERROR]
    assert parent.data.metrics["sweep/children"] == 1
    assert "sweep/summary.md" in [artifact.path for artifact in client.list_artifacts(parent.info.run_id, "sweep")]
