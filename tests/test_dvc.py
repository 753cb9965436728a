"""The DVC pipeline as a user runs it: a real git repository, real `dvc repro` / `dvc exp run` / `dvc queue`,
the real stages, and the MLflow store they write."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from conftest import ROOT, all_runs
from pipeline.stages.params import MACHINE_VARIABLES, anchor_paths
from pipeline.train import fill_from_data

# A small CNN for three epochs on the bundled digits: seconds per stage, and the CNN plots exist.
TINY = ["model=cnn", "model.channels=[8,16]", "model.pool_after=[0,1]", "trainer.max_epochs=3", "optimizer.lr=0.02"]
PROJECT_FILES = ["conf", "src", "dvc.yaml", ".dvcignore", ".dvc/config", ".gitignore"]
CNN_PLOTS = {"learning_curves.png", "confusion_matrix.png", "misclassified.png", "filters.png",
             "feature_maps.png", "explanations.png", "explanations.json"}


def command_env() -> dict:
    env = {key: value for key, value in os.environ.items() if key not in MACHINE_VARIABLES}
    # The stages run `python -m ...`: this interpreter's environment first on PATH, as an activated venv is.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def sh(folder: Path, *command: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=folder, env=command_env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def make_repo(folder: Path, *overrides: str) -> Path:
    """A fresh git repository holding the project's pipeline files and a params.yaml composed with overrides."""
    folder.mkdir(parents=True)
    for name in PROJECT_FILES:
        source, target = ROOT / name, folder / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)
    sh(folder, sys.executable, "-m", "pipeline.stages.params", *overrides)
    sh(folder, "git", "init", "-q")
    sh(folder, "git", "add", "-A")
    sh(folder, "git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "pipeline")
    return folder


def ran_stages(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


def stale_stages(repo: Path) -> set[str]:
    """The stages `dvc repro` would run now (dvc status lists each with what changed)."""
    return set(json.loads(sh(repo, "dvc", "status", "--json").stdout))


def set_flags(overrides: list[str]) -> list[str]:
    return [part for override in overrides for part in ("-S", override)]


def read_metrics(repo: Path) -> dict:
    return json.loads((repo / "results/evaluate/metrics.json").read_text())


def set_param(repo: Path, key: str, value) -> None:
    params = OmegaConf.load(repo / "params.yaml")
    OmegaConf.update(params, key, value)
    (repo / "params.yaml").write_text(OmegaConf.to_yaml(params))


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
    """A tiny pipeline reproduced once: (repo folder, `dvc repro` output)."""
    repo = make_repo(tmp_path_factory.mktemp("dvc") / "project", *TINY)
    result = sh(repo, "dvc", "repro")
    return repo, result.stdout


def test_repro_runs_the_four_stages_and_writes_sane_outputs(repro):
    import torch

    repo, output = repro
    assert ran_stages(output) == ["prepare", "train", "evaluate", "visualize"]
    prepared = torch.load(repo / "results/prepare/data.pt", weights_only=False)
    assert sum(len(y) for _, y in prepared["splits"].values()) == 1797  # all of the digits, split
    history = (repo / "results/train/history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "train/acc", "train/loss"]
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3"]
    metrics = read_metrics(repo)
    assert 0.3 < metrics["acc"] <= 1 and metrics["loss"] > 0 and 0 < metrics["f1_macro"] <= 1  # chance is 0.1
    assert sorted(metrics["per_class"]) == [str(d) for d in range(10)]
    assert sum(c["support"] for c in metrics["per_class"].values()) == 360
    predictions = (repo / "results/evaluate/details/predictions.csv").read_text().splitlines()
    assert predictions[0] == "actual,predicted" and len(predictions) == 361
    correct = sum(a == p for a, p in (line.split(",") for line in predictions[1:]))
    assert correct / 360 == pytest.approx(metrics["acc"], abs=1e-4)
    plots = {path.name: path for path in (repo / "results/visualize").iterdir()}
    assert set(plots) == CNN_PLOTS
    assert all(path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 2000 for path in plots.values()
               if path.suffix == ".png")
    # Lightning's scratch checkpoints are gone: only the declared outputs (and DVC's .gitignore) remain.
    assert {path.name for path in (repo / "results/train").iterdir()} == {
        ".gitignore", "model.ckpt", "history.csv", "mlflow_run.json"}


def test_the_pipeline_run_is_one_mlflow_run_with_the_stage_outputs(repro):
    import mlflow
    import torch

    repo, _ = repro
    client, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "dvc repro"
    assert run.data.tags["pipeline.entry"] == "dvc"
    assert run.data.metrics["test/acc"] == pytest.approx(read_metrics(repo)["acc"], abs=1e-5)
    assert run.data.params["model.channels"] == "[8, 16]"
    assert json.loads((repo / "results/train/mlflow_run.json").read_text())["run_id"] == run.info.run_id

    def artifacts(path=""):
        for item in client.list_artifacts(run.info.run_id, path):
            yield from artifacts(item.path) if item.is_dir else [item.path]

    logged = set(artifacts())
    assert {"dvc/train/history.csv", "dvc/evaluate/metrics.json", "dvc/evaluate/predictions.csv",
            "dvc/prepare/summary.json", "config/config.yaml", "data/description.json"} <= logged
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "dvc/prepare/summary.json")).read_text())
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert summary["md5"] == lock["stages"]["prepare"]["outs"][0]["md5"]
    assert summary["splits"] == {"train": 1257, "val": 180, "test": 360}
    assert {f"plots/{name}" for name in CNN_PLOTS} <= logged
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")
    try:
        model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_metrics_and_plots_show_what_the_pipeline_measured(repro):
    repo, _ = repro
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    values = shown[""]["data"]["results/evaluate/metrics.json"]["data"]  # "": the workspace
    assert values["acc"] == read_metrics(repo)["acc"]
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    assert {"loss", "accuracy", "confusion_matrix"} <= set(plots)
    assert any(name.endswith("explanations.png") for name in plots)


def test_a_second_repro_does_nothing(repro):
    repo, _ = repro
    output = sh(repo, "dvc", "repro").stdout
    assert ran_stages(output) == [] and "Data and pipelines are up to date." in output
    assert sh(repo, "git", "status", "--porcelain", "--", "params.yaml", "dvc.yaml").stdout == ""


def test_a_parameter_change_reruns_only_the_stages_that_read_it(repro, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repro[0], repo, symlinks=True)
    before = read_metrics(repo)

    set_param(repo, "viz.dpi", 60)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["visualize"]
    assert read_metrics(repo) == before

    set_param(repo, "optimizer.lr", 0.01)
    assert ran_stages(sh(repo, "dvc", "repro").stdout) == ["train", "evaluate", "visualize"]
    assert read_metrics(repo) != before

    # The data section is read by every stage: all four are out of date (dvc status), and running the prepare
    # stage alone shows whether its output changed (the later stages' reruns are the checks above).
    prepared = (repo / "results/prepare/data.pt").read_bytes()
    set_param(repo, "data.batch_size", 32)  # the prepared data stays byte for byte the same
    assert stale_stages(repo) == {"prepare", "train", "evaluate", "visualize"}
    assert ran_stages(sh(repo, "dvc", "repro", "prepare").stdout) == ["prepare"]
    assert (repo / "results/prepare/data.pt").read_bytes() == prepared

    set_param(repo, "data.val_fraction", 0.2)
    assert stale_stages(repo) == {"prepare", "train", "evaluate", "visualize"}
    assert ran_stages(sh(repo, "dvc", "repro", "prepare").stdout) == ["prepare"]
    assert (repo / "results/prepare/data.pt").read_bytes() != prepared


def test_exp_run_with_set_composes_params_from_conf_and_changes_the_result(repro, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repro[0], repo, symlinks=True)
    before = read_metrics(repo)
    result = sh(repo, "dvc", "exp", "run", "-n", "higher-lr", *set_flags(TINY), "-S", "optimizer.lr=0.01")
    assert "prepare" not in ran_stages(result.stdout)  # the data did not change
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["optimizer"]["lr"] == 0.01 and params["model"]["channels"] == [8, 16]
    assert read_metrics(repo) != before

    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "higher-lr" in shown and str(read_metrics(repo)["acc"]) in shown
    _, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert {run.info.run_name for run in runs} == {"dvc repro", "dvc exp higher-lr"}


def test_queued_experiments_run_and_track_into_the_projects_store(repro, tmp_path):
    repo = tmp_path / "copy"
    shutil.copytree(repro[0], repo, symlinks=True)
    sh(repo, "dvc", "exp", "run", "--queue", *set_flags(TINY), "-S", "optimizer.lr=0.005,0.01")
    sh(repo, "dvc", "queue", "start")
    deadline = time.time() + 400
    while time.time() < deadline:
        status = sh(repo, "dvc", "queue", "status").stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(3)
    assert status.count("Success") == 2, status
    sh(repo, "dvc", "queue", "stop", check=False)
    shown = sh(repo, "dvc", "exp", "show", "--csv").stdout
    assert "0.005" in shown and "0.01" in shown
    # The queued runs worked in temporary copies; their MLflow runs are in the project's store all the same.
    _, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    queued = [run for run in runs if run.data.tags.get("dvc.experiment")]
    assert len(queued) == 2 and all(run.info.status == "FINISHED" for run in queued)
    assert {run.data.params["optimizer.lr"] for run in queued} == {"0.005", "0.01"}


def test_two_clean_repros_and_run_py_give_identical_metrics(repro, tmp_path):
    repo = make_repo(tmp_path / "again", *TINY)
    sh(repo, "dvc", "repro")
    assert read_metrics(repo) == read_metrics(repro[0])
    # run.py with the same config: the same result (same code, same seed).
    result = sh(repo, sys.executable, str(ROOT / "run.py"), *TINY, "logger=none", f"hydra.run.dir={tmp_path}/run")
    line = result.stdout.strip().splitlines()[-1]
    assert f"test/acc={read_metrics(repo)['acc']:.4f}" in line, line


def test_committed_params_yaml_is_the_composition_of_the_conf_defaults(tmp_path, monkeypatch):
    from pipeline.stages.params import write

    monkeypatch.chdir(ROOT)
    write([], tmp_path / "composed.yaml")
    composed = yaml.safe_load((tmp_path / "composed.yaml").read_text())
    assert composed == yaml.safe_load((ROOT / "params.yaml").read_text())


def test_dvc_analytics_are_off_and_hydra_composition_is_on():
    config = (ROOT / ".dvc/config").read_text()
    assert "analytics = false" in config and "enabled = true" in config


def test_paths_under_the_project_root_are_anchored_at_dvc_root():
    cfg = OmegaConf.create({"paths": {"root": ".", "output_dir": "results/train"},
                            "logger": {"tracking_uri": "sqlite:///./mlflow.db"},
                            "data": {"root": "./data", "cache_dir": "./data/cache", "name": "digits"},
                            "files": ["./a", "b"]})
    anchor_paths(cfg, "/home/me/project")
    assert cfg.paths == {"root": "/home/me/project", "output_dir": "results/train"}
    assert cfg.logger.tracking_uri == "sqlite:////home/me/project/mlflow.db"
    assert cfg.data == {"root": "/home/me/project/data", "cache_dir": "/home/me/project/data/cache", "name": "digits"}
    assert list(cfg.files) == ["/home/me/project/a", "b"]
    unchanged = OmegaConf.create({"paths": {"root": "/abs"}, "data": {"root": "/abs/data"}})
    anchor_paths(unchanged, "/elsewhere")
    assert unchanged.data.root == "/abs/data"


def test_sizes_a_resolved_config_leaves_null_come_from_the_data():
    cfg = OmegaConf.create({"data": {"num_classes": None}, "model": {"num_classes": None, "vocab_size": None},
                            "task": {"num_classes": None}})

    class Loaded:
        num_classes, vocab_size = 5, 30

    fill_from_data(cfg, Loaded())
    assert (cfg.data.num_classes, cfg.model.num_classes, cfg.model.vocab_size, cfg.task.num_classes) == (5, 5, 30, 5)


def test_the_stages_fill_the_sizes_params_yaml_leaves_null_from_the_data(tmp_path):
    """data=chars finds its classes in the files, so params.yaml (resolved) has num_classes: null everywhere."""
    from test_chars import write_names

    write_names(tmp_path / "data" / "names")
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.params", "data=chars", "model=gru", "model.hidden_size=16",
       f"data.root={tmp_path}/data", "data.download=false", "trainer.max_epochs=2", "logger=none")
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["model"]["num_classes"] is None
    for stage in ("prepare", "train", "evaluate"):
        sh(tmp_path, sys.executable, "-m", f"pipeline.stages.{stage}")
    assert sorted(read_metrics(tmp_path)["per_class"]) == ["Alpha", "Beta", "Gamma"]


def test_ctrl_c_in_a_stage_marks_the_pipeline_run_killed(tmp_path):
    import signal

    from test_errors import interruptible, wait_for_running

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.params", "trainer.max_epochs=10000")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.prepare")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    all_runs(uri)  # create the store before the stage does (see test_errors)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path, env=command_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               preexec_fn=interruptible)
    try:
        wait_for_running(uri, 1, process)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=90)
    finally:
        process.kill()
    assert process.returncode != 0
    _, runs = all_runs(uri)
    assert [run.info.status for run in runs] == ["KILLED"]
    assert not (tmp_path / "results/train/model.ckpt").exists()


def test_a_stage_without_params_or_with_a_bad_value_is_one_clear_line(tmp_path):
    result = sh(tmp_path, sys.executable, "-m", "pipeline.stages.train", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml not found in {tmp_path}: run the stages with `dvc repro` from the project root, "
        "or write it with `python -m pipeline.stages.params`"]
    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.params")
    result = sh(tmp_path, sys.executable, "-m", "pipeline.stages.evaluate", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: results/prepare/data.pt not found: run `dvc repro` (its prepare stage writes it)")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.params", "optimizer.lr=-1")
    result = sh(tmp_path, sys.executable, "-m", "pipeline.stages.prepare", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: optimizer.lr=-1"), result.stderr


def test_a_train_stage_killed_mid_run_continues_when_run_again(tmp_path):
    import signal

    from test_resume import epochs_logged

    shutil.copytree(ROOT / "conf", tmp_path / "conf")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.params", "trainer.max_epochs=6", "data.batch_size=16")
    sh(tmp_path, sys.executable, "-m", "pipeline.stages.prepare")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    all_runs(uri)
    process = subprocess.Popen([sys.executable, "-m", "pipeline.stages.train"], cwd=tmp_path, env=command_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while epochs_logged(tmp_path / "mlflow.db") < 3:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    process.kill()  # kill -9: no chance to say anything
    process.communicate()

    sh(tmp_path, sys.executable, "-m", "pipeline.stages.train")  # what `dvc repro` runs again
    client, runs = all_runs(uri)
    assert [run.info.status for run in runs] == ["FINISHED"]  # the same MLflow run, continued
    assert len({m.step for m in client.get_metric_history(runs[0].info.run_id, "val/acc")}) == 6
    history = (tmp_path / "results/train/history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert not (tmp_path / "results/train/checkpoints").exists()  # the scratch folder goes once it is done


def planted_corpus(folder: Path) -> Path:
    from test_text import planted_text

    corpus = folder / "corpus.txt"
    corpus.write_text(planted_text(seed=0, length=6000))
    return corpus


# Per task: a tiny `dvc exp run -S ...`, its metrics.json keys, its plots, and the files its evaluate stage writes.
TASK_PIPELINES = {
    "reconstruct": (["task=reconstruct", "model=linear_autoencoder", "trainer.max_epochs=2"],  # conv: test_tasks
                    {"loss", "mse", "psnr", "pca_mse", "pca_psnr", "mse_over_pca"},
                    {"learning_curves.png", "reconstructions.png", "codes.png"}, set()),
    "vae": (["task=vae", "model=vae", "model.hidden=[64]", "model.latent_dim=2", "trainer.max_epochs=2"],
            {"loss", "reconstruction", "kl"},
            {"learning_curves.png", "samples.png", "reconstructions.png", "latent.png", "manifold.png"}, set()),
    "embed": (["task=embed", "model=word2vec", "data=text", "data.min_count=5", "model.embedding_dim=16",
               "trainer.max_epochs=2"],
              {"loss"}, {"learning_curves.png", "words.png"}, {"neighbours.json", "vectors.txt"}),
}


@pytest.mark.parametrize("task", TASK_PIPELINES)
def test_exp_run_of_each_task_runs_the_four_stages_with_its_own_metrics_and_plots(tmp_path, task):
    overrides, metric_keys, plots, details = TASK_PIPELINES[task]
    if task == "embed":
        overrides = [*overrides, f"data.path={planted_corpus(tmp_path)}"]
    repo = make_repo(tmp_path / "project")
    result = sh(repo, "dvc", "exp", "run", "-n", task, *set_flags(overrides), timeout=600)
    assert ran_stages(result.stdout) == ["prepare", "train", "evaluate", "visualize"]
    metrics = read_metrics(repo)
    assert set(metrics) == metric_keys and all(isinstance(value, float) for value in metrics.values())
    shown = json.loads(sh(repo, "dvc", "metrics", "show", "--json").stdout)
    assert shown[""]["data"]["results/evaluate/metrics.json"]["data"] == metrics
    assert {path.name for path in (repo / "results/visualize").iterdir()} == plots
    assert {path.name for path in (repo / "results/evaluate/details").iterdir()} == details
    shown_plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    assert "loss" in shown_plots and {name for name in plots} <= {Path(key).name for key in shown_plots}

    _, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    (tracked,) = runs
    assert tracked.info.status == "FINISHED" and tracked.info.run_name == f"dvc exp {task}"
    assert tracked.data.metrics["test/loss"] == pytest.approx(metrics["loss"], abs=1e-5)
