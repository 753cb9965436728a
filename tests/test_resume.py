"""Nothing lost: a run killed without a word is found and marked KILLED, and `resume` continues it from its last
epoch, in the same MLflow run, to exactly the result of a run that was never interrupted."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, all_runs, epochs_logged

# dropout and shuffling draw random numbers every step: a resume that lost any random state would differ
# 16 epochs: a kill sent after epoch 3 must land before the run ends, on a machine loaded by the rest of the suite
EPOCHS = 16
ARGS = [f"trainer.max_epochs={EPOCHS}", "regularization=dropout", "data.batch_size=16"]


def start_and_stop_at_epoch(tmp_path, tracking_uri, epoch: int, how: int, *args: str, whole_group=False):
    """Start a run and send it `how` once it has logged `epoch` epochs: the trainer alone, or with `whole_group`
    its tracking process too (a power loss, an out-of-memory kill of the group)."""
    all_runs(tracking_uri)  # the store exists before polling it
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path}/first"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                               start_new_session=whole_group)
    deadline = time.time() + 120
    while epochs_logged(tmp_path / "mlflow.db", "val/acc") < epoch:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    if whole_group:
        os.killpg(process.pid, how)
    else:
        process.send_signal(how)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, f"the run ended before the signal landed:\n{stderr[-3000:]}"
    return stderr


def ended_run(tracking_uri, run_id: str, timeout: float = 60.0):
    """The run once it is no longer RUNNING (its tracking process ends it a moment after the trainer died)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    deadline = time.time() + timeout
    while (run := client.get_run(run_id)).info.status == "RUNNING" and time.time() < deadline:
        time.sleep(0.05)
    return run


def metrics_of(run) -> dict:
    return {key: value for key, value in run.data.metrics.items() if key.startswith(("test/", "val/"))}


def test_kill_9_then_resume_auto_continues_the_same_run_to_the_uninterrupted_result(run_py, tmp_path, tracking_uri):
    uninterrupted = run_py(*ARGS)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    _, (reference,) = all_runs(tracking_uri)

    stderr = start_and_stop_at_epoch(tmp_path, tracking_uri, 3, signal.SIGKILL, *ARGS)
    client, runs = all_runs(tracking_uri)
    (killed,) = [run for run in runs if run.info.run_id != reference.info.run_id]
    # the trainer could not say so, but its tracking process outlives it and does at once
    killed = ended_run(tracking_uri, killed.info.run_id)
    epochs = len(client.get_metric_history(killed.info.run_id, "val/acc"))
    assert killed.info.status == "KILLED", f"{epochs} epochs logged; the run's stderr:\n{stderr[-3000:]}"
    assert "ended without a word" in killed.data.tags["pipeline.error"]

    resumed = run_py(*ARGS, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    assert len(runs) == 2  # no new run: the killed one went on
    (continued,) = [run for run in runs if run.info.run_id == killed.info.run_id]
    assert continued.info.status == "FINISHED"
    assert "pipeline.error" not in continued.data.tags
    # every epoch, at the same steps (an epoch stopped between logging and checkpointing is logged twice, alike)
    steps = {m.step for m in client.get_metric_history(continued.info.run_id, "val/acc")}
    assert steps == {m.step for m in client.get_metric_history(reference.info.run_id, "val/acc")}
    expected, got = metrics_of(reference), metrics_of(continued)
    assert got.keys() == expected.keys() and "test/acc" in got
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-6), key


def test_a_run_killed_without_a_word_is_marked_killed_when_the_pipeline_next_starts(run_py, tmp_path, tracking_uri):
    start_and_stop_at_epoch(tmp_path, tracking_uri, 1, signal.SIGKILL, *ARGS, whole_group=True)
    _, (ghost,) = all_runs(tracking_uri)
    assert ghost.info.status == "RUNNING"  # nothing could say otherwise: both processes died at once
    result = run_py("trainer.max_epochs=1")  # any later start against the store
    assert result.returncode == 0, result.stderr[-3000:]
    _, runs = all_runs(tracking_uri)
    ghost = [run for run in runs if run.data.params["trainer.max_epochs"] == str(EPOCHS)][0]
    assert ghost.info.status == "KILLED"
    assert "ended without a word" in ghost.data.tags["pipeline.error"]


def test_resume_by_run_id_alone_takes_the_recorded_config(run_py, tmp_path, tracking_uri):
    start_and_stop_at_epoch(tmp_path, tracking_uri, 2, signal.SIGINT, *ARGS)
    _, (stopped,) = all_runs(tracking_uri)
    assert stopped.info.status == "KILLED"

    resumed = run_py(f"resume={stopped.info.run_id}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED" and run.data.params["data.batch_size"] == "16"
    assert len({m.step for m in client.get_metric_history(run.info.run_id, "val/acc")}) == EPOCHS

    again = run_py(f"resume={run.info.run_id}")  # finished: nothing to continue
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"error: resume={run.info.run_id}: the run is finished; only a stopped, failed or killed run can be resumed"]
    unknown = run_py("resume=0123456789abcdef")
    assert unknown.returncode == 2 and "resume=0123456789abcdef" in unknown.stderr.strip().splitlines()[-1]


def test_resume_with_another_config_is_refused(run_py, tmp_path, tracking_uri):
    start_and_stop_at_epoch(tmp_path, tracking_uri, 2, signal.SIGINT, *ARGS)
    _, (stopped,) = all_runs(tracking_uri)
    result = run_py(*ARGS, "optimizer.lr=0.5", f"resume={stopped.info.run_id}")
    assert result.returncode == 2
    assert "trained with another config" in result.stderr.strip().splitlines()[-1]


def test_ghosts_are_judged_by_pid_here_and_by_heartbeat_elsewhere(tracking_uri):
    import mlflow

    from pipeline import liveness, tracking

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    here = liveness.process_tags()
    old, fresh = str(int(time.time()) - 3600), str(int(time.time()))
    cases = {  # run name: (tags, the status it must have after the next start)
        "dead pid here": ({**here, liveness.PID: dead.stdout.strip()}, "KILLED"),
        "this very process": (here, "RUNNING"),
        "reused pid here": ({**here, liveness.STARTED: "1"}, "KILLED"),
        "silent elsewhere": ({**here, liveness.HOST: "elsewhere", liveness.HEARTBEAT: old}, "KILLED"),
        "beating elsewhere": ({**here, liveness.HOST: "elsewhere", liveness.HEARTBEAT: fresh}, "RUNNING"),
        # a container sharing the host name sees other pids: judged by its heartbeat too
        "beating container": ({**here, liveness.PID_NAMESPACE: "pid:[1]", liveness.HEARTBEAT: fresh}, "RUNNING"),
        "silent container": ({**here, liveness.PID_NAMESPACE: "pid:[1]", liveness.HEARTBEAT: old}, "KILLED"),
        "not the pipeline's": ({}, "RUNNING"),
    }
    client = mlflow.MlflowClient(tracking_uri)
    tracking.ensure_store(tracking_uri)
    experiment = client.create_experiment("ghosts")
    ids = {name: client.create_run(experiment, run_name=name, tags=tags).info.run_id
           for name, (tags, _) in cases.items()}
    tracking._ghosts_checked.discard(tracking_uri)
    tracking.client(tracking_uri)  # what every pipeline start does
    assert {name: client.get_run(run_id).info.status for name, run_id in ids.items()} == {
        name: status for name, (_, status) in cases.items()}


@pytest.mark.parametrize("flip", [True, "alternate"])
def test_the_datamodule_state_carries_shuffling_and_augmentation_on(tmp_path, flip):
    """What a checkpoint keeps of the data: after a restore, the next epoch's batches and their random crops and
    flips (random, or alternating from epoch to epoch) are the ones the uninterrupted datamodule draws."""
    import torch

    from test_images import cifar_module, write_cifar

    write_cifar(tmp_path / "data" / "cifar-10-batches-py")

    def epoch(datamodule):
        return [datamodule.augment(x) for x, _ in datamodule.train_dataloader()]

    running = cifar_module(tmp_path, flip=flip)
    running.setup("fit")
    epoch(running)  # epoch 1, then a checkpoint
    saved = running.state_dict()
    assert set(saved) == {"shuffle_generator", "augment_generator", "training_passes"}
    expected = epoch(running)  # epoch 2, uninterrupted

    restored = cifar_module(tmp_path, flip=flip)  # a new process after a crash
    restored.setup("fit")
    restored.load_state_dict(saved)
    got = epoch(restored)
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    fresh = cifar_module(tmp_path, flip=flip)
    fresh.setup("fit")
    assert not torch.equal(epoch(fresh)[0], expected[0])  # without the state, epoch 2 would be epoch 1 again
