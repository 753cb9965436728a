"""The report of a sweep or search, rebuilt from MLflow: trials and states, the best trial or the Pareto front as a
command line, the plots, and `python -m pipeline.report` on any sweep's parent."""
import json
import os
import subprocess
import sys

import pytest
from matplotlib.image import imread

from conftest import ROOT, all_runs
from pipeline import tracking
from pipeline.store import artifact_root
from pipeline.search.report import Report, Trial, best, collect, command, log_report, markdown, value_text
from pipeline.viz.search_plots import plot_history, plot_importance, plot_pareto

START = 1_700_000_000_000  # ms; runs get explicit start times so that "oldest first" and "newest" are certain

SPACE = "model.hidden: choice([32],[64],[64,32],[128])\noptimizer.lr: tag(log, interval(0.001, 1.0))\n"
# (trial, params, state, run status, metrics, error); created in this order, which is not the trials' order
TPE = [(2, {"model.hidden": [64], "optimizer.lr": 0.001}, "PRUNED", "FINISHED", {"val/acc_best": 0.97}, ""),
       (0, {"model.hidden": [32], "optimizer.lr": 0.1}, "COMPLETE", "FINISHED",
        {"val/acc_best": 0.90, "test/acc": 0.89}, ""),
       (10, {"model.hidden": [128], "optimizer.lr": 0.01}, "COMPLETE", "FINISHED",
        {"val/acc_best": 0.93, "test/acc": 0.92}, ""),
       (1, {"model.hidden": [64, 32], "optimizer.lr": 0.01}, "COMPLETE", "FINISHED",
        {"val/acc_best": 0.95, "test/acc": 0.94}, ""),
       (3, {"model.hidden": [32], "optimizer.lr": 1.0}, "FAIL", "FAILED", {}, "training diverged at epoch 1")]
# accuracy up, size down: 2 is dominated by 1, 4 by 0; the pruned 5 would dominate all but does not count
NSGA2 = [(number, {"model.hidden": hidden, "optimizer.lr": 0.01}, state, status,
          {"val/acc_best": acc, "params": size} if acc else {}, "" if acc else "out of memory")
         for number, hidden, state, status, acc, size in [
             (0, [16], "COMPLETE", "FINISHED", 0.90, 1000), (1, [64], "COMPLETE", "FINISHED", 0.95, 5000),
             (2, [64, 16], "COMPLETE", "FINISHED", 0.93, 6000), (3, [8], "COMPLETE", "FINISHED", 0.85, 800),
             (4, [16, 16], "COMPLETE", "FINISHED", 0.88, 1200), (5, [4], "PRUNED", "KILLED", 0.99, 100),
             (6, [512], "FAIL", "FAILED", None, None)]]
GRID = [("optimizer=sgd optimizer.lr=0.001", "FINISHED", {"val/loss_best": 0.50, "test/acc": 0.80}, ""),
        ("optimizer=sgd optimizer.lr=0.01", "FINISHED", {"val/loss_best": 0.30, "test/acc": 0.90}, ""),
        ("optimizer=adam optimizer.lr=0.001", "FAILED", {}, "training diverged at epoch 2")]


class Store:
    """A real SQLite MLflow store holding runs made the way the sweepers make them."""

    def __init__(self, uri: str):
        self.uri, self.client, self.time = uri, tracking.client(uri), START
        self.experiment = self.client.create_experiment("report", artifact_location=artifact_root(uri))

    def run(self, name, tags=None, params=None, metrics=None, status="FINISHED", parent=None, artifacts=None):
        self.time += 1000
        tags = {**(tags or {}), **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = self.client.create_run(self.experiment, start_time=self.time, tags=tags, run_name=name).info.run_id
        for key, value in (params or {}).items():
            self.client.log_param(run_id, key, value)
        for key, value in (metrics or {}).items():
            self.client.log_metric(run_id, key, value, timestamp=self.time)
        for path, text in (artifacts or {}).items():
            self.client.log_text(run_id, text, path)
        self.client.set_terminated(run_id, status, end_time=self.time + 500)
        return run_id

    def search(self, strategy, objectives, fixed, trials):
        sweep = " ".join(fixed)
        parent = self.run(f"sweep: {sweep}", tags={
            "pipeline.sweep": sweep, "search.strategy": strategy, "search.objectives": json.dumps(objectives),
            "search.fixed_overrides": json.dumps(fixed)},
            artifacts={"sweep/overrides.txt": "\n".join(fixed) + "\n", "search/space.yaml": SPACE})
        for number, params, state, status, metrics, error in trials:
            config = {"model.hidden": str(params["model.hidden"]), "optimizer.lr": str(params["optimizer.lr"]),
                      "task.monitor": "val/acc", "task.mode": "max"}
            tags = {"search.trial": str(number), "search.state": state, "search.params": json.dumps(params),
                    **({"pipeline.error": error} if error else {})}
            self.run(f"trial {number}", tags, config, metrics, status, parent)
        return parent

    def grid(self):
        overrides = ["optimizer=sgd,adam", "optimizer.lr=0.001,0.01", "trainer.max_epochs=1"]
        parent = self.run("sweep: " + " ".join(overrides), tags={"pipeline.sweep": " ".join(overrides)},
                          artifacts={"sweep/overrides.txt": "\n".join(overrides) + "\n"})
        for name, status, metrics, error in GRID:
            optimizer, lr = (part.split("=")[1] for part in name.split())
            params = {"optimizer.name": optimizer, "optimizer.lr": lr, "task.monitor": "val/loss", "task.mode": "min"}
            self.run(name, {"pipeline.error": error} if error else {}, params, metrics, status, parent)
        return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store, three sweeps (a 1-objective TPE search, a 2-objective NSGA-II search, a grid sweep, newest last)
    and, newest of all, a single run that is no sweep."""
    import mlflow

    made = Store(f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db")
    made.tpe = made.search("tpe", [["val/acc_best", "maximize"]], ["search=nas_mlp", "data=digits"], TPE)
    made.nsga2 = made.search("nsga2", [["val/acc_best", "maximize"], ["params", "minimize"]],
                             ["search=nas_mlp", "data=digits"], NSGA2)
    made.grid_parent = made.grid()
    made.single = made.run("optimizer=adam", params={"optimizer.lr": "0.01"})
    yield made
    mlflow.set_tracking_uri(None)


def report_cli(*args, uri=None, cwd=None):
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([sys.executable, "-m", "pipeline.report", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_a_search_lists_its_trials_by_number_with_state_params_values_and_errors(store):
    report = collect(store.client, store.tpe)
    assert report.strategy == "tpe" and report.objectives == [("val/acc_best", "maximize")]
    assert report.fixed == ["search=nas_mlp", "data=digits"] and "optimizer.lr" in report.space
    assert [(t.number, t.state, t.name) for t in report.trials] == [
        (0, "COMPLETE", "trial 0"), (1, "COMPLETE", "trial 1"), (2, "PRUNED", "trial 2"), (3, "FAIL", "trial 3"),
        (10, "COMPLETE", "trial 10")]
    one = report.trials[1]
    assert one.params == {"model.hidden": [64, 32], "optimizer.lr": 0.01}
    assert one.values == {"val/acc_best": pytest.approx(0.95)} and one.tests == {"test/acc": pytest.approx(0.94)}
    assert report.trials[3].error == "training diverged at epoch 1"


def test_the_best_trial_is_the_best_finished_one_not_a_better_pruned_one(store):
    report = collect(store.client, store.tpe)
    assert best(report).number == 1  # 0.95; pruned trial 2 reached 0.97 but was stopped


def test_the_summary_has_the_counts_the_table_and_the_best_config_as_a_command(store):
    text = markdown(collect(store.client, store.tpe))
    assert "Strategy: tpe; objective: val/acc_best (maximize)" in text
    assert "Trials: 5 (3 COMPLETE, 1 PRUNED, 1 FAIL)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [row.split(" | ")[1:3] for row in rows] == [
        ["trial 0", "COMPLETE"], ["trial 1 (best)", "COMPLETE"], ["trial 2", "PRUNED"], ["trial 3", "FAIL"],
        ["trial 10", "COMPLETE"]]
    assert "| 1 | trial 1 (best) | COMPLETE | 0.9500 | [64,32] | 0.01 | 0.9400 |" in text
    assert "Failed jobs (1):\n\n- trial 3: training diverged at epoch 1" in text
    assert "Best trial #1 (trial 1)" in text
    assert "\npython run.py search=nas_mlp data=digits model.hidden=[64,32] optimizer.lr=0.01\n" in text


def test_two_objectives_give_the_pareto_front_one_command_per_trial(store):
    report = collect(store.client, store.nsga2)
    assert report.objectives == [("val/acc_best", "maximize"), ("params", "minimize")]
    assert [t.number for t in best(report)] == [0, 1, 3]
    text = markdown(report)
    assert "Pareto front (3 trials)" in text and text.count("(pareto)") == 3
    commands = [line for line in text.splitlines() if line.startswith("python run.py")]
    assert commands == [f"python run.py search=nas_mlp data=digits model.hidden={hidden} optimizer.lr=0.01"
                        for hidden in ("[16]", "[64]", "[8]")]
    assert "# trial 3: val/acc_best 0.8500, params 800" in text


def test_a_grid_sweep_reads_its_values_from_run_names_and_its_objective_from_the_task(store):
    report = collect(store.client, store.grid_parent)
    assert report.strategy == "grid" and report.objectives == [("val/loss_best", "minimize")]
    assert report.fixed == ["trainer.max_epochs=1"]
    assert [(t.number, t.state, t.params) for t in report.trials] == [
        (0, "FINISHED", {"optimizer": "sgd", "optimizer.lr": 0.001}),
        (1, "FINISHED", {"optimizer": "sgd", "optimizer.lr": 0.01}),
        (2, "FAILED", {"optimizer": "adam", "optimizer.lr": 0.001})]
    assert best(report).name == "optimizer=sgd optimizer.lr=0.01"  # the lower loss
    text = markdown(report)
    assert "Trials: 3 (2 FINISHED, 1 FAILED)" in text and "optimizer=sgd optimizer.lr=0.01 (best)" in text
    assert "\npython run.py trainer.max_epochs=1 optimizer=sgd optimizer.lr=0.01\n" in text


@pytest.mark.parametrize("value", [[64, 32], 0.01, 1e-05, 3, "relu", "conf/a-b.yaml", "a b", "it's", "a\\b", "ends\\",
                                   "x\\'y", True, None,
                                   "true", "1", ["x", [1, 2]]])
def test_a_value_is_written_as_hydra_reads_it_back(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert OverridesParser.create().parse_override(f"key={value_text(value)}").value() == value


def test_a_command_line_quotes_only_what_the_shell_needs(store):
    report = Report(store.client.get_run(store.tpe), "tpe", [("val/acc_best", "maximize")], [], ["data=digits"])
    trial = Trial("trial 0", "r0", 0, "COMPLETE", {"model.hidden": [8], "+model.name": "a b"}, {}, {})
    assert command(report, trial) == "python run.py data=digits model.hidden=[8] \"+model.name='a b'\""


@pytest.mark.parametrize("sweep, plots", [("tpe", {"history", "importance"}),
                                          ("nsga2", {"history", "pareto"}),  # one parameter varies: no importance
                                          ("grid_parent", {"history"})])  # its finished trials differ in lr only
def test_the_plots_that_apply_are_written_as_readable_pngs(store, tmp_path, sweep, plots):
    report = collect(store.client, getattr(store, sweep))
    made = {name: plot(report, tmp_path / f"{name}.png") for name, plot in
            [("history", plot_history), ("importance", plot_importance), ("pareto", plot_pareto)]}
    assert {name for name, path in made.items() if path is not None} == plots
    for name in plots:
        image = imread(made[name])
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_too_little_data_gives_no_plot_rather_than_an_empty_one(store, tmp_path):
    parent = store.client.get_run(store.tpe)
    one = Trial("trial 0", "r0", 0, "COMPLETE", {"optimizer.lr": 0.1}, {"val/acc_best": 0.9}, {})
    failed = Trial("trial 1", "r1", 1, "FAIL", {"optimizer.lr": 1.0}, {"val/acc_best": float("nan")}, {})
    only_one = Report(parent, "tpe", [("val/acc_best", "maximize")], [one, failed])
    assert plot_importance(only_one, tmp_path / "importance.png") is None  # one finished trial
    assert plot_pareto(only_one, tmp_path / "pareto.png") is None  # one objective
    assert plot_history(Report(parent, "tpe", [("val/acc_best", "maximize")], [failed]), tmp_path / "h.png") is None
    assert best(Report(parent, "tpe", [("val/acc_best", "maximize")], [failed])) is None


def test_log_report_writes_the_summary_and_plots_on_the_parent(store, tmp_path):
    text = log_report(store.client, store.nsga2)
    artifacts = {a.path for a in store.client.list_artifacts(store.nsga2, "sweep")}
    assert {"sweep/summary.md", "sweep/history.png", "sweep/pareto.png"} <= artifacts
    summary = store.client.download_artifacts(store.nsga2, "sweep/summary.md", str(tmp_path))
    assert open(summary).read() == text
    png = store.client.download_artifacts(store.nsga2, "sweep/pareto.png", str(tmp_path))
    assert imread(png).ndim == 3


def test_the_command_prints_a_sweeps_summary_by_id_and_the_newest_with_latest(store, tmp_path):
    by_id = report_cli(store.tpe, "--tracking-uri", store.uri)
    assert by_id.returncode == 0, by_id.stderr[-3000:]
    assert f"sweep {store.tpe}" in by_id.stdout and "Strategy: tpe" in by_id.stdout
    assert "python run.py search=nas_mlp data=digits model.hidden=[64,32] optimizer.lr=0.01" in by_id.stdout

    # the newest run with children, not the newest run; the store from MLFLOW_TRACKING_URI
    latest = report_cli("--latest", uri=store.uri, cwd=tmp_path)
    assert latest.returncode == 0, latest.stderr[-3000:]
    assert f"sweep {store.grid_parent}" in latest.stdout and "Strategy: grid" in latest.stdout
    assert "python run.py trainer.max_epochs=1 optimizer=sgd optimizer.lr=0.01" in latest.stdout


@pytest.mark.parametrize("tagged", [True, False], ids=["tagged parents", "parents written before the tag"])
def test_latest_is_the_newest_parent_with_children(tmp_path, tagged):
    from pipeline.report import latest_sweep

    made = Store(f"sqlite:///{tmp_path}/mlflow.db")
    tag = (lambda sweep: {"pipeline.sweep": sweep}) if tagged else (lambda sweep: {})
    older = made.run("sweep: a", tags=tag("a"))
    for job in range(20):
        made.run(f"job a{job}", parent=older)
    newest = made.run("sweep: b", tags=tag("b"))
    made.run("job b", parent=newest)
    made.run("sweep: c", tags=tag("c"))  # stopped before its first job: no children
    made.run("a single run")
    search, read = made.client.search_runs, []

    def counted_search(*args, **kwargs):
        found = search(*args, **kwargs)
        read.extend(found)
        return found

    made.client.search_runs = counted_search
    assert latest_sweep(made.client) == newest
    # tagged: the newest parents and one child of each, not every child in the store
    assert len(read) <= 4 if tagged else len(read) >= 21


@pytest.mark.parametrize("which, message", [
    ("unknown", "error: no run 0123456789abcdef0123456789abcdef in "),
    ("single", "is not a sweep's parent (it has no child runs): give a sweep's parent run or --latest"),
    ("child", "is not a sweep's parent (it has no child runs): it is a job of sweep ")])
def test_a_run_that_is_no_sweep_parent_is_refused_in_one_line(store, which, message):
    run_id = {"unknown": "0123456789abcdef0123456789abcdef", "single": store.single,
              "child": collect(store.client, store.tpe).trials[0].run_id}[which]
    result = report_cli(run_id, uri=store.uri)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_a_real_grid_sweep_is_reported_with_both_children_and_the_best(run_py, tracking_uri, tmp_path):
    result = run_py("-m", "optimizer.lr=0.001,0.01", "trainer.max_epochs=1", "threads=1")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    best_name = parent.data.tags["best_run_name"]  # as the sweep itself ranked its children

    shown = report_cli("--latest", uri=tracking_uri, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert f"sweep {parent.info.run_id}" in shown.stdout
    assert "optimizer.lr=0.001" in shown.stdout and "optimizer.lr=0.01" in shown.stdout
    assert f"{best_name} (best)" in shown.stdout and "Trials: 2 (2 FINISHED)" in shown.stdout
    assert f"python run.py trainer.max_epochs=1 threads=1 {best_name}\n" in shown.stdout
    assert "sweep/history.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
