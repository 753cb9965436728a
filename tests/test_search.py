"""Searches as a user runs them: `python run.py -m search=...` in a subprocess, the real Optuna study in SQLite
beside the real MLflow store, real trials. A tiny architecture search end to end; resume after kill -9; failing,
refused and NaN trials; pruning; parallel trials with joblib; the space overridden on the command line."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from conftest import ROOT, all_runs
from pipeline import tracking
from pipeline.search.parent_records import children_of

# A tiny evolution over MLPs on the digits: 2 epochs per candidate, a population of 3.
TINY = ["search=nas_mlp", "hydra.sweeper.budget.epochs=2", "hydra.sweeper.evolution.population_size=3",
        "hydra.sweeper.evolution.tournament_size=2", "~callbacks.progress_bar"]


def study_of(tmp_path) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/optuna.db")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tmp_path}/optuna.db")


def parent_and_children(tracking_uri: str):
    client, runs = all_runs(tracking_uri)
    (parent,) = [run for run in runs if "search.strategy" in run.data.tags]
    return client, parent, children_of(client, parent.info.run_id)


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_a_tiny_architecture_search_end_to_end(run_py, tracking_uri, tmp_path):
    result = run_py("-m", *TINY, "hydra.sweeper.n_trials=6", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = parent_and_children(tracking_uri)
    assert parent.info.status == "FINISHED" and parent.data.tags["search.strategy"] == "evolution"
    assert len(children) == 6 and {child.data.tags["search.trial"] for child in children} == {str(n) for n in range(6)}
    study = study_of(tmp_path)
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 6
    for child in children:  # each child is named by and records the architecture it trained
        searched = json.loads(child.data.tags["search.params"])
        assert set(searched) == {"model.hidden", "model.activation", "regularization.dropout", "model.dropout_at",
                                 "model.batchnorm_at"}
        assert json.loads(child.data.params["model.hidden"].replace("'", '"')) == searched["model.hidden"]
        assert 1 <= len(searched["model.hidden"]) <= 4
        assert child.data.tags["search.state"] == "COMPLETE"
        assert child.data.metrics["val/acc_best"] == pytest.approx(
            study.trials[int(child.data.tags["search.trial"])].value)
    logged = artifacts(client, parent.info.run_id)
    assert {"sweep/summary.md", "sweep/history.png", "search/space.yaml"} <= logged
    summary = client.download_artifacts(parent.info.run_id, "sweep/summary.md")
    best = study.best_trial
    text = open(summary).read()
    assert "python run.py" in text and "search=nas_mlp" in text
    assert f"best trial {best.number}" in result.stdout  # printed too, with its command line


def wait_for(condition, timeout: float = 300, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError("timed out")


def test_a_search_killed_with_sigkill_continues_when_the_same_command_runs_again(tmp_path, tracking_uri):
    command = [sys.executable, str(ROOT / "run.py"), "-m", *TINY, "hydra.sweeper.n_trials=6",
               f"hydra.sweep.dir={tmp_path}/sweep"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}
    first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)

    def two_finished():  # read from MLflow, through the pipeline's safe opening of the store
        if not (tmp_path / "mlflow.db").exists():
            return False
        client = tracking.client(tracking_uri)
        runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
        return sum(run.data.tags.get("search.state") == "COMPLETE" for run in runs) >= 2

    wait_for(two_finished)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = study_of(tmp_path).trials
    _, parent_before, _ = parent_and_children(tracking_uri)

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert len(trials) == 6  # the budget is a total
    assert [trial.number for trial in trials] == list(range(6))
    for old in before:  # finished trials are kept, not repeated; the one that was running is FAIL
        expected = old.state if old.state != TrialState.RUNNING else TrialState.FAIL
        assert trials[old.number].state == expected and trials[old.number].params == old.params
    client, parent, children = parent_and_children(tracking_uri)
    assert parent.info.run_id == parent_before.info.run_id and parent.info.status == "FINISHED"
    assert sum(child.info.status == "FINISHED" for child in children) == sum(
        trial.state == TrialState.COMPLETE for trial in trials)
    assert all(child.info.status != "RUNNING" for child in children)


def test_failing_refused_and_nan_trials_are_recorded_and_the_search_goes_on(run_py, tracking_uri, tmp_path):
    # A grid over a learning rate that diverges and a dropout the config refuses: 4 trials, one good.
    result = run_py("-m", "search=tpe", "hydra.sweeper.strategy=grid", "~hydra.sweeper.params",
                    "optimizer.lr=choice(0.01,1e12)", "regularization.dropout=choice(0.0,1.5)",
                    "hydra.sweeper.n_trials=4", "hydra.sweeper.max_failure_rate=0.9",
                    "hydra.sweeper.budget.epochs=2", "~callbacks.progress_bar", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(tmp_path)
    states = {(trial.params["optimizer.lr"], trial.params["regularization.dropout"]): trial.state
              for trial in study.trials}
    assert states == {(0.01, 0.0): TrialState.COMPLETE, (1e12, 0.0): TrialState.FAIL,
                      (0.01, 1.5): TrialState.FAIL, (1e12, 1.5): TrialState.FAIL}
    _, parent, children = parent_and_children(tracking_uri)
    assert len(children) == 4 and parent.info.status == "FINISHED"
    by_state = {}
    for child in children:
        by_state.setdefault(child.data.tags["search.state"], []).append(child)
    assert len(by_state["COMPLETE"]) == 1 and len(by_state["FAIL"]) == 3
    errors = sorted(child.data.tags["pipeline.error"] for child in by_state["FAIL"])
    assert sum("regularization.dropout=1.5 is invalid" in error for error in errors) == 2
    assert sum("diverged" in error for error in errors) == 1
    assert all(child.info.status == "FAILED" for child in by_state["FAIL"])
    for child in by_state["FAIL"]:  # refused ones too: their values of the searched keys, as overrides name them
        assert set(json.loads(child.data.tags["search.params"])) == {"optimizer.lr", "regularization.dropout"}
    assert result.stderr.count("failed:") + result.stderr.count("trial ") >= 3


def test_a_search_past_its_failure_rate_stops_with_one_line(run_py, tracking_uri):
    result = run_py("-m", "search=tpe", "hydra.sweeper.strategy=random", "~hydra.sweeper.params",
                    "regularization.dropout=interval(1.5,2.0)", "hydra.sweeper.n_trials=10",
                    "hydra.sweeper.max_failure_rate=0.5", timeout=600)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: search stopped: 4 of 4 trials failed (more than hydra.sweeper.max_failure_rate"), last
    _, parent, children = parent_and_children(tracking_uri)
    assert len(children) == 4 and parent.info.status == "FAILED"


def test_parallel_trials_with_joblib_share_one_study_and_lose_none(run_py, tracking_uri, tmp_path):
    result = run_py("-m", *TINY, "hydra.sweeper.strategy=random", "hydra.sweeper.n_trials=4",
                    "hydra.sweeper.n_jobs=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(tmp_path)
    assert [trial.state for trial in study.trials] == [TrialState.COMPLETE] * 4
    _, parent, children = parent_and_children(tracking_uri)
    assert sorted(int(child.data.tags["search.trial"]) for child in children) == [0, 1, 2, 3]
    assert all(child.info.status == "FINISHED" for child in children)


def test_the_command_line_adds_to_and_replaces_the_search_space(run_py, tracking_uri, tmp_path):
    result = run_py("-m", *TINY, "hydra.sweeper.strategy=random", "hydra.sweeper.n_trials=2",
                    "optimizer.lr=tag(log,interval(0.001,0.01))", "model.activation=choice(relu)", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(tmp_path)
    for trial in study.trials:
        assert 0.001 <= trial.params["optimizer.lr"] <= 0.01
        assert trial.params["model.activation"] == "relu"


def test_a_trial_worse_than_the_median_is_pruned_and_recorded_killed(compose_config, tracking_uri, tmp_path,
                                                                      monkeypatch):
    from pipeline.search import study as studies
    from pipeline.search.pruning import Pruned
    from pipeline.train import run

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="pruning", storage=url, direction="maximize",
                                pruner=studies.pruner("median"))
    distribution = optuna.distributions.FloatDistribution(1e-8, 1.0, log=True)
    for _ in range(3):  # three earlier trials that were good from the first epoch on
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": 0.003}, distributions={
            "optimizer.lr": distribution}, value=0.95, intermediate_values={step: 0.9 for step in range(6)}))
    trial = study.ask({"optimizer.lr": distribution})
    for name, value in studies.for_trial_runs(url, "pruning", "median", "val/acc").items():
        monkeypatch.setenv(name, value)
    cfg = compose_config("optimizer.lr=1e-7", f"trial={trial.number}", "trainer.max_epochs=6", "threads=1",
                         "~callbacks.progress_bar")
    with pytest.raises(Pruned, match="pruned after epoch 2: val/acc="):
        run(cfg, overrides=["optimizer.lr=1e-7"], swept_keys=["optimizer.lr"])
    monkeypatch.delenv(studies.ENV)
    _, runs = all_runs(tracking_uri)
    (pruned,) = runs
    assert pruned.info.status == "KILLED" and "pruned after epoch 2" in pruned.data.tags["pipeline.error"]
    assert pruned.data.tags["search.trial"] == str(trial.number)
    assert json.loads(pruned.data.tags["search.params"]) == {"optimizer.lr": 1e-7}
    assert study.trials[trial.number].intermediate_values == {0: pytest.approx(0.1, abs=0.1),
                                                               1: pytest.approx(0.1, abs=0.1)}


def search_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("search", ["nas_mlp", "nas_cnn", "nas_rnn", "tpe", "nsga2", "random"])
def test_every_architecture_a_ready_search_proposes_builds_and_fits_its_data(search):
    """Random genomes, their mutants and their crossovers: each composes, validates and runs one forward pass."""
    import random

    from omegaconf import OmegaConf, open_dict

    from pipeline.checks import check_job
    from pipeline.search.space import crossover, mutate, overrides, parse_space, random_genome

    sizes = ["data.num_classes=18", "data.vocab_size=60"] if search == "nas_rnn" else []  # chars finds them
    base = search_config(f"search={search}", *sizes)
    sweeper = OmegaConf.to_container(base.hydra.sweeper, resolve=False)
    space = parse_space(sweeper["params"] or {}, sweeper["lists"] or {})
    rng = random.Random(0)
    genomes = [random_genome(space, rng) for _ in range(8)]
    genomes += [mutate(rng.choice(genomes), space, rng) for _ in range(8)]
    genomes += [crossover(rng.choice(genomes), rng.choice(genomes), space, rng) for _ in range(8)]
    for genome in genomes:
        cfg = search_config(f"search={search}", *sizes, *overrides(genome))
        with open_dict(cfg):
            del cfg["hydra"]
        check_job(cfg)


def test_nsga2_searches_two_objectives_and_reports_the_pareto_front(run_py, tracking_uri, tmp_path):
    result = run_py("-m", "search=nsga2", "hydra.sweeper.n_trials=6", "hydra.sweeper.budget.epochs=2",
                    "~callbacks.progress_bar", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    client, parent, children = parent_and_children(tracking_uri)
    assert json.loads(parent.data.tags["search.objectives"]) == [["val/acc_best", "maximize"],
                                                                 ["model/params", "minimize"]]
    study = study_of(tmp_path)
    front = {trial.number for trial in study.best_trials}
    assert front and len(children) == 6
    summary = open(client.download_artifacts(parent.info.run_id, "sweep/summary.md")).read()
    for child in children:
        number = int(child.data.tags["search.trial"])
        assert (f"{child.info.run_name} (pareto)" in summary) == (number in front)
        assert study.trials[number].values == [pytest.approx(child.data.metrics["val/acc_best"]),
                                               child.data.metrics["model/params"]]
    assert "sweep/pareto.png" in artifacts(client, parent.info.run_id)


def test_a_search_prunes_a_hopeless_trial_and_records_it_pruned(run_py, tracking_uri, tmp_path):
    # Grid order with seed 5 (Optuna's GridSampler shuffles by seed): three good rates, then one that cannot learn.
    result = run_py("-m", "search=tpe", "hydra.sweeper.strategy=grid", "hydra.sweeper.seed=5", "~hydra.sweeper.params",
                    "optimizer.lr=choice(0.01,0.005,0.003,1e-7)", "hydra.sweeper.budget.epochs=4",
                    "~callbacks.progress_bar", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(tmp_path)
    states = {trial.params["optimizer.lr"]: trial.state for trial in study.trials}
    assert states == {0.01: TrialState.COMPLETE, 0.005: TrialState.COMPLETE, 0.003: TrialState.COMPLETE,
                      1e-7: TrialState.PRUNED}
    (pruned,) = [trial for trial in study.trials if trial.state == TrialState.PRUNED]
    assert len(pruned.intermediate_values) < 4  # stopped before its budget
    _, parent, children = parent_and_children(tracking_uri)
    (child,) = [child for child in children if child.data.tags["search.state"] == "PRUNED"]
    assert child.info.status == "KILLED" and child.data.tags["search.trial"] == str(pruned.number)
    assert "pruned after epoch" in child.data.tags["pipeline.error"]
    assert "1 PRUNED" in open(
        all_runs(tracking_uri)[0].download_artifacts(parent.info.run_id, "sweep/summary.md")).read()


def test_the_mlp_places_dropout_and_batchnorm_where_its_flags_say():
    from torch import nn

    from pipeline.models.mlp import MLP

    def kinds(model):
        return [type(module).__name__ for module in model.net if not isinstance(module, (nn.Flatten, nn.ReLU))]

    placed = MLP([1, 8, 8], 10, [8, 8, 8], dropout=0.5, dropout_at=[True, False, True, False],
                 batchnorm_at=[False, True, False, False])  # the 4th flag is past the depth: unused
    assert kinds(placed) == ["Linear", "Dropout", "Linear", "BatchNorm1d", "Linear", "Dropout", "Linear"]
    everywhere = MLP([1, 8, 8], 10, [8, 8], dropout=0.5, batchnorm=True)  # null: every layer, as before
    assert kinds(everywhere) == ["Linear", "BatchNorm1d", "Dropout", "Linear", "BatchNorm1d", "Dropout", "Linear"]
    with pytest.raises(ValueError, match=r"model.dropout_at=\[True\] is invalid: .* at least one entry per hidden layer"):
        MLP([1, 8, 8], 10, [8, 8], dropout=0.5, dropout_at=[True])
