"""Decision regions of classifiers on the 2-D toy sets: the grid is predicted right, every toy run logs the plot and
its grid, other data draw none, and `experiment=activations` puts its four runs side by side on the sweep's parent."""
from pathlib import Path
from urllib.parse import urlparse

import matplotlib.image
import mlflow
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from torch import nn

from conftest import all_runs
from pipeline.viz.decision_regions import (accuracy, decision_regions, load_regions, plot_decision_regions,
                                           plot_region_panels, save_regions)


class Recorded(nn.Module):
    """A hand-set linear classifier: class 1 exactly where x1 > 2 x2 + 0.3. Records the mode and grad state of
    every call and the batch sizes."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -2.0]]))
            self.linear.bias.copy_(torch.tensor([0.0, -0.3]))
        self.calls = []

    def forward(self, x):
        self.calls.append((len(x), self.training, torch.is_grad_enabled()))
        return self.linear(x)


def side(x1, x2):
    return x1 - 2 * x2 - 0.3


def points_and_labels(count=200):
    points = torch.rand(count, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([3.0, 2.0]) - 1
    return points, (side(points[:, 0], points[:, 1]) > 0).long()


def test_the_grid_is_predicted_in_eval_mode_and_lands_on_the_right_side_of_a_known_line():
    model = Recorded()
    points, labels = points_and_labels()
    regions = decision_regions(model, points, labels, ["below", "above"], steps=120, batch_size=5000)

    xs, ys, classes = regions["xs"], regions["ys"], regions["classes"]
    assert xs.shape == ys.shape == (120,) and classes.shape == (120, 120)
    # the grid covers the points with a margin of a tenth of their extent on each side
    low, high = points.min(0).values.numpy(), points.max(0).values.numpy()
    margin = 0.1 * (high - low)
    assert np.allclose([xs[0], ys[0]], low - margin, atol=1e-5) and np.allclose([xs[-1], ys[-1]], high + margin)
    # row = x2, column = x1: every grid point off the line is in the class its side says
    distance = side(xs[None, :], ys[:, None])
    clear = np.abs(distance) > 1e-4
    assert ((classes == 1) == (distance > 0))[clear].all()
    assert 0.2 < classes.mean() < 0.8  # both classes present: the check above could not pass by one class
    assert (regions["predictions"] == labels.numpy()).all() and accuracy(regions) == 1.0
    # batched (120² = 14,400 grid points in calls of at most 5,000), in eval mode, without gradients; mode restored
    assert [n for n, _, _ in model.calls] == [5000, 5000, 4400, 200]
    assert all(not training and not grad for _, training, grad in model.calls) and model.training
    assert str(regions["model"]) == "Recorded" and str(regions["activation"]) == ""


def test_a_hand_set_wrong_model_is_scored_wrong():
    model = Recorded()
    points, labels = points_and_labels()
    regions = decision_regions(model, points, 1 - labels, ["below", "above"], steps=20)
    assert accuracy(regions) == 0.0


def test_only_points_in_the_plane_have_regions():
    with pytest.raises(ValueError, match=r"need 2-D inputs, shape \(N, 2\); got \(5, 3\)"):
        decision_regions(nn.Linear(3, 2), torch.rand(5, 3), torch.zeros(5, dtype=torch.long), ["a", "b"])


def light_share(picture, index):
    """Share of the picture's pixels in class `index`'s light region colour (within 2/100)."""
    light = 0.3 * np.array(to_rgb(f"C{index}")) + 0.7
    return (np.abs(picture[..., :3] - light) < 0.02).all(axis=-1).mean()


def test_the_plot_fills_each_class_region_and_the_file_reads_back(tmp_path):
    points, labels = points_and_labels()
    regions = decision_regions(nn.Sequential(Recorded(), nn.Tanh()), points, labels, ["below", "above"])
    assert str(regions["activation"]) == "tanh"

    saved = load_regions(save_regions(regions, tmp_path / "regions.npz"))
    assert saved.keys() == regions.keys()
    assert all(np.array_equal(saved[key], regions[key]) for key in regions)

    picture = matplotlib.image.imread(plot_decision_regions(saved, tmp_path / "one.png"))
    # the line x1 = 2 x2 + 0.3 splits this plane into two large parts: both painted in their class's light colour
    assert light_share(picture, 0) > 0.1 and light_share(picture, 1) > 0.1 and light_share(picture, 2) == 0
    panels = plot_region_panels([(f"run {i}", saved) for i in range(4)], tmp_path / "four.png", "four runs")
    assert matplotlib.image.imread(panels).shape[1] > picture.shape[1]


def test_data_that_are_not_points_in_the_plane_draw_no_regions(compose_config, tmp_path):
    from pipeline.train import build_data, build_task

    cfg = compose_config("data=digits")
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    (tmp_path / "plots").mkdir()
    plots = task.plots(datamodule, cfg.viz, tmp_path / "plots")
    _, files = task.evaluation(datamodule, tmp_path)
    assert "confusion_matrix.png" in {path.name for path in plots}
    assert "decision_regions.png" not in {path.name for path in plots}
    assert [path.name for path in files] == ["predictions.csv"]


def test_a_toy_run_logs_the_plot_and_the_grid_of_the_tested_model(run_py, tracking_uri):
    result = run_py("data=xor", "data.num_samples=400", "trainer.max_epochs=3", "model.activation=tanh")
    assert result.returncode == 0, result.stderr[-3000:]
    client, (run,) = all_runs(tracking_uri)
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/decision_regions.png" in plots
    png = client.download_artifacts(run.info.run_id, "plots/decision_regions.png")
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

    regions = load_regions(client.download_artifacts(run.info.run_id, "evaluation/decision_regions.npz"))
    assert (str(regions["model"]), str(regions["activation"])) == ("MLP", "tanh")
    assert regions["points"].shape == (80, 2) and regions["classes"].shape == (300, 300)
    assert set(np.unique(regions["classes"])) <= {0, 1} and list(regions["class_names"]) == ["0", "1"]
    # the grid is the model that was tested (the best checkpoint), on the test points as the model saw them
    assert accuracy(regions) == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)
    assert regions["xs"][0] < regions["points"][:, 0].min() and regions["ys"][-1] > regions["points"][:, 1].max()


def test_the_activations_lab_draws_its_four_runs_side_by_side_on_the_parent(run_py, tracking_uri, tmp_path):
    from pipeline.report import main as report_main
    from pipeline.search.report import collect, decision_region_panels

    result = run_py("-m", "experiment=activations", "trainer.max_epochs=1", "data.num_samples=300")
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r is not parent]
    assert client.get_experiment(parent.info.experiment_id).name == "activations"
    assert sorted(c.info.run_name for c in children) == sorted(
        f"model.activation={name}" for name in ("sigmoid", "tanh", "relu", "softplus"))
    assert all(c.info.status == "FINISHED" for c in children) and parent.info.status == "FINISHED"
    assert "sweep/decision_regions.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}

    # the panels are the children's own grids, in the order they ran, scored as MLflow scored them
    panels = decision_region_panels(client, collect(client, parent.info.run_id), tmp_path)
    by_name = {c.info.run_name: c for c in children}
    assert [name for name, _ in panels] == [f"model.activation={a}" for a in ("sigmoid", "tanh", "relu", "softplus")]
    for name, regions in panels:
        assert str(regions["activation"]) == name.split("=")[1]
        assert accuracy(regions) == pytest.approx(by_name[name].data.metrics["test/acc"], abs=1e-6)

    # python -m pipeline.report rebuilds the summary from MLflow, this plot included
    drawn = Path(urlparse(parent.info.artifact_uri).path) / "sweep" / "decision_regions.png"
    drawn.unlink()
    assert report_main(["--tracking-uri", tracking_uri, parent.info.run_id]) == 0
    assert drawn.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_whose_runs_logged_no_regions_gets_no_region_plot(tracking_uri, tmp_path):
    from pipeline.search.report import collect, decision_region_plot

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.create_experiment("other", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment, run_name="sweep: optimizer=sgd,adam").info.run_id
    for name in ("optimizer=sgd", "optimizer=adam"):
        child = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
        client.log_text(child, "actual,predicted\n", "evaluation/predictions.csv")
        client.set_terminated(child, "FINISHED")
    (tmp_path / "plots").mkdir()
    assert decision_region_plot(client, collect(client, parent), tmp_path / "plots") == []
    assert list((tmp_path / "plots").iterdir()) == []
