"""Sweeps through submitit (hydra-submitit-launcher): its local executor runs each job as its own process, the way its
SLURM executor runs each job as a cluster job; the SLURM launcher's config composes with the documented overrides."""
from hydra import compose, initialize_config_dir

from conftest import CONF, finished_two_rate_sweep


def test_a_sweep_through_submitits_local_executor_lands_under_one_parent(run_py, tracking_uri, tmp_path):
    swept = run_py("-m", "hydra/launcher=submitit_local", "optimizer.lr=0.01,0.03", "trainer.max_epochs=1",
                   "threads=1", timeout=600)
    assert swept.returncode == 0, swept.stderr[-3000:]

    parent, children = finished_two_rate_sweep(tracking_uri)
    assert parent.data.tags["best_run_id"] in {child.info.run_id for child in children}
    # Each job ran in a process submitit started (and logged, as on a cluster), not in the sweeping process.
    pids = {child.data.tags["pipeline.pid"] for child in children}
    assert len(pids) == 2 and parent.data.tags["pipeline.pid"] not in pids
    job_logs = sorted((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))
    assert len(job_logs) == 2, job_logs


def test_the_slurm_launcher_composes_with_a_clusters_settings(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True, overrides=[
            "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=120",
            "hydra.launcher.cpus_per_task=8", "hydra.launcher.gpus_per_node=1", "hydra.launcher.mem_gb=32",
            "trainer=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task, launcher.gpus_per_node,
            launcher.mem_gb, launcher.tasks_per_node) == ("gpu", 120, 8, 1, 32, 1)
    assert launcher.submitit_folder.endswith("/.submitit/%j")  # each job's logs, beside the sweep's outputs
