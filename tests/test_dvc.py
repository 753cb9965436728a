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


@pytest.fixture(scope="session")
def shared_repro(tmp_path_factory):
    """A tiny pipeline reproduced once for the whole test session, whichever xdist workers ask for it: the first
    builds it under a lock in the folder the workers share, the others wait and take it. (Not xdist's loadgroup:
    with pytest 9 it silently groups nothing.)"""
    import fcntl

    shared = tmp_path_factory.getbasetemp().parent / "dvc_repro"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "repro.out").exists():
            repo = make_repo(shared / "project", *TINY)
            (shared / "repro.out").write_text(sh(repo, "dvc", "repro").stdout)
    return shared / "project", (shared / "repro.out").read_text()


@pytest.fixture
def repro(shared_repro, tmp_path):
    """That pipeline, copied for this test (the tests run dvc in it, and DVC locks a repository per command):
    (repo folder, `dvc repro` output)."""
    repo = tmp_path / "project"
    shutil.copytree(shared_repro[0], repo, symlinks=True)
    return repo, shared_repro[1]


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
    repo = repro[0]
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


def test_queued_experiments_run_and_track_into_the_projects_store(repro, tmp_path):
    repo = repro[0]
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


def test_run_py_with_the_pipelines_config_gives_its_metrics(repro, tmp_path):
    """Same code, same seed, same result, whichever way the experiment runs (run.py's output outside the repo)."""
    repo, _ = repro
    result = sh(repo, sys.executable, str(ROOT / "run.py"), *TINY, "logger=none", f"hydra.run.dir={tmp_path}/run")
    line = result.stdout.strip().splitlines()[-1]
    assert f"test/acc={read_metrics(repo)['acc']:.4f}" in line, line


def test_the_visualize_stage_writes_the_checked_explanations(repro):
    repo, _ = repro
    saved = json.loads((repo / "results/visualize/explanations.json").read_text())
    assert saved["images"] == 300
    assert saved["deletion_drop_saliency"] == pytest.approx(
        saved["accuracy_random_mask"] - saved["accuracy_masked_saliency"])
    assert (repo / "results/visualize/explanations.png").read_bytes()[:4] == b"\x89PNG"
    plots = json.loads(sh(repo, "dvc", "plots", "show", "--json").stdout)["data"]
    assert any(name.endswith("explanations.png") for name in plots)
    client, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    (pipeline_run,) = [run for run in runs if run.info.run_name == "dvc repro"]
    assert "plots/explanations.json" in {item.path for item in client.list_artifacts(pipeline_run.info.run_id,
                                                                                        "plots")}


def test_dvc_exp_run_composes_params_with_set_and_fine_tunes_from_a_checkpoint(repro, tmp_path):
    """`dvc exp run -S` composes params.yaml from conf/ and the overrides; here the transfer keys: the pipeline
    trains from a checkpoint (model.init_from) with part of the network frozen (model.freeze)."""
    import torch

    repo = repro[0]
    before = read_metrics(repo)
    source = tmp_path / "source.ckpt"
    shutil.copy(repo / "results/train/model.ckpt", source)
    tuning = [*TINY, f"model.init_from={source}", "model.freeze=[features]"]
    result = sh(repo, "dvc", "exp", "run", "-n", "fine-tune", *set_flags(tuning))
    assert ran_stages(result.stdout) == ["train", "evaluate", "visualize"]  # the data did not change
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["model"]["init_from"] == str(source) and params["model"]["channels"] == [8, 16]
    assert read_metrics(repo) != before
    shown = sh(repo, "dvc", "exp", "show", "--json").stdout
    assert "fine-tune" in shown and str(read_metrics(repo)["acc"]) in shown

    def network(path):
        state = torch.load(path, weights_only=False)["state_dict"]
        return {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}

    before, after = network(source), network(repo / "results/train/model.ckpt")
    frozen = [key for key in after if key.startswith("features.")]
    assert frozen and all(torch.equal(after[key], before[key]) for key in frozen)
    assert not torch.equal(after["classifier.1.weight"], before["classifier.1.weight"])
    _, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert {run.info.run_name for run in runs} == {"dvc repro", "dvc exp fine-tune"}
    tuned = next(r for r in runs if "transfer.init_from" in r.data.tags)
    assert tuned.data.tags["transfer.init_from"] == str(source)
    assert tuned.data.tags["transfer.frozen"] == str(len(frozen))


SHARED_OUTPUTS = ["results/prepare/data.pt", "results/train/model.ckpt", "results/evaluate/metrics.json"]


def push_then_pull_in_a_fresh_clone(repo: Path, clone: Path) -> None:
    """What a teammate does: the pipeline's state is in git (dvc.lock, the remote in .dvc/config), the files are
    in the remote; a clone of the git repository has none of them until `dvc pull`."""
    pushed = sh(repo, "dvc", "push").stdout
    assert "pushed" in pushed, pushed
    sh(repo, "git", "add", "dvc.lock", ".dvc/config", "results/evaluate/metrics.json")
    sh(repo, "git", "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "-q", "-m", "results")
    sh(clone.parent, "git", "clone", "-q", str(repo), clone.name)
    assert not (clone / "results/train/model.ckpt").exists()
    sh(clone, "dvc", "pull")
    for path in SHARED_OUTPUTS:
        assert (clone / path).read_bytes() == (repo / path).read_bytes(), path
    assert stale_stages(clone) == set()  # the pulled outputs are exactly what dvc.lock records


def test_dvc_push_and_pull_the_prepared_data_and_model_through_a_local_remote(repro, tmp_path):
    repo = repro[0]
    sh(repo, "dvc", "remote", "add", "-d", "lab", str(tmp_path / "remote"))
    push_then_pull_in_a_fresh_clone(repo, tmp_path / "clone")
    assert list((tmp_path / "remote" / "files" / "md5").rglob("*"))


def test_dvc_push_and_pull_through_an_s3_remote(repro, tmp_path, monkeypatch):
    """S3 (here moto's S3 server on loopback, the way dvc-s3's own tests run): the same push and pull."""
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="lab-pipeline")
        repo = repro[0]
        sh(repo, "dvc", "remote", "add", "-d", "lab", "s3://lab-pipeline/dvc")
        sh(repo, "dvc", "remote", "modify", "lab", "endpointurl", endpoint)
        push_then_pull_in_a_fresh_clone(repo, tmp_path / "clone")
        stored = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="lab-pipeline", Prefix="dvc/")
        assert stored["KeyCount"] >= len(SHARED_OUTPUTS)
    finally:
        server.stop()
