"""Explanations that are checked: attributions with a known answer (a linear model), Grad-CAM and the deletion test
on a CNN that must look at a planted patch, the weight-randomisation check, `python -m pipeline.explain` on a real
tracked run (and its one-line refusals), and the DVC visualize stage's explanation files."""
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from conftest import all_runs
from pipeline.explain import main
from pipeline.explanations import (attribute, attribution_maps, black_value, deletion_test, last_conv,
                                   pixel_importance, reinitialised, sanity_check, top_pixels)
from pipeline.train import run

QUIET = ["~callbacks.progress_bar", "threads=1"]
SIZE = 12  # planted images are 1 x SIZE x SIZE


def test_linear_model_saliency_is_its_weight_row_and_integrated_gradients_are_weight_times_input():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x, target = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 2, 1, 0])
    weights = model[1].weight.detach().view(3, 1, 4, 4)
    saliency = attribute(model, x, target, "saliency", torch.zeros(1, 1, 1, 1))
    assert torch.allclose(saliency, weights[target], atol=1e-6)
    integrated = attribute(model, x, target, "integrated_gradients", torch.zeros(1, 1, 1, 1), steps=20)
    assert torch.allclose(integrated, weights[target] * x, atol=1e-5)
    with pytest.raises(ValueError, match="convolutional"):
        attribute(model, x, target, "grad_cam", torch.zeros(1, 1, 1, 1))


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients", "grad_cam"])
def test_attributions_equal_captums_own_per_example_scores(method):
    """attribute() hands captum the batch's summed target scores (one backward pass): each input's gradient must be
    what captum computes from one score per example, for a nonlinear CNN with BatchNorm (in eval mode)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    x, target = torch.randn(7, 1, 6, 6), torch.tensor([0, 1, 2, 1, 0, 2, 2])
    ours = attribute(model, x, target, method, torch.zeros(1, 1, 1, 1), steps=9)
    inputs = x.clone().requires_grad_()
    if method == "saliency":
        theirs = Saliency(model).attribute(inputs, target=target, abs=False)
    elif method == "integrated_gradients":
        theirs = IntegratedGradients(model).attribute(inputs, baselines=torch.zeros_like(x), target=target, n_steps=9)
    else:
        cam = LayerGradCam(model, model[3]).attribute(inputs, target=target, relu_attributions=True)
        theirs = LayerAttribution.interpolate(cam, (6, 6), interpolate_mode="bilinear")
    assert torch.allclose(ours, theirs.detach(), atol=1e-6)


def planted(count: int, seed: int):
    """Dim noise; class 1 images hold a bright 3x3 patch somewhere, class 0 none: (x, y, patch masks)."""
    generator = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.rand(count, 1, SIZE, SIZE, generator=generator)
    y = torch.arange(count) % 2
    patch = torch.zeros_like(x, dtype=torch.bool)
    corners = torch.randint(0, SIZE - 2, (count, 2), generator=generator)
    for index in (y == 1).nonzero().flatten().tolist():
        row, column = corners[index].tolist()
        patch[index, 0, row:row + 3, column:column + 3] = True
    return torch.where(patch, torch.ones_like(x), x), y, patch


@pytest.fixture(scope="module")
def patch_cnn():
    """A tiny CNN trained (plain loop, seconds) to tell images with the planted patch from those without."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x, y, _ = planted(512, seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(150):
        batch = torch.randint(0, len(x), (64,))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
    model.eval()
    test_x, test_y, patch = planted(200, seed=2)
    with torch.no_grad():
        assert (model(test_x).argmax(-1) == test_y).float().mean() > 0.95
    return model, test_x, test_y, patch


def test_grad_cam_finds_the_planted_patch_far_better_than_chance(patch_cnn):
    model, x, y, patch = patch_cnn
    with_patch = y == 1
    cam = attribute(model, x[with_patch], y[with_patch], "grad_cam", torch.zeros(1, 1, 1, 1))
    top = top_pixels(pixel_importance(cam))  # 10 % of the pixels: 15 of 144
    share_on_patch = (top & patch[with_patch]).sum() / top.sum()
    assert share_on_patch > 0.4  # chance: 9 patch pixels of 144, 6 %


def test_deletion_test_masks_the_pixels_the_model_uses_not_random_ones(patch_cnn):
    model, x, y, _ = patch_cnn
    black = torch.zeros(1, 1, 1, 1)
    maps = {method: attribute(model, x, y, method, black, steps=16)
            for method in ("saliency", "integrated_gradients", "grad_cam")}
    result = deletion_test(model, x, y, maps, black)
    assert result["accuracy"] > 0.95 and result["accuracy_random_mask"] > 0.8
    for method in maps:  # removing the patch turns class 1 into class 0: about half the images go wrong
        assert result[f"deletion_drop_{method}"] > 0.3, (method, result)


def test_attributions_of_a_reinitialised_model_correlate_less_than_the_model_with_itself(patch_cnn):
    model, x, y, _ = patch_cnn
    black = torch.zeros(1, 1, 1, 1)
    maps = attribution_maps(model, x[:40], y[:40], ("saliency", "integrated_gradients", "grad_cam"), black, steps=16)
    itself = sanity_check(maps, attribution_maps(model, x[:40], y[:40], maps, black, steps=16))
    fresh = sanity_check(maps, attribution_maps(reinitialised(model), x[:40], y[:40], maps, black, steps=16))
    for method in maps:
        assert itself[method] == pytest.approx(1.0, abs=1e-4)
        assert fresh[method] < 0.9 * itself[method], (method, fresh)
    assert all(not torch.equal(a, b) for a, b in zip(model.parameters(), reinitialised(model).parameters()))


@pytest.fixture
def train_tiny(compose_config, tracking_uri):
    def _train(*overrides):
        run(compose_config("trainer.max_epochs=2", *QUIET, *overrides), overrides=[])
        _, runs = all_runs(tracking_uri)
        return max(runs, key=lambda found: found.info.start_time).info.run_id

    return _train


def test_explain_a_tracked_cnn_run_writes_figure_and_json_and_logs_them_back(train_tiny, tracking_uri, tmp_path):
    run_id = train_tiny("model=cnn", "model.channels=[8,16]", "model.pool_after=[0,1]", "optimizer.lr=0.02",
                        "viz.explain_images=50", "viz.explain_steps=6")
    client = mlflow.MlflowClient(tracking_uri)
    plots = {item.path for item in client.list_artifacts(run_id, "plots")}
    assert {"plots/explanations.png", "plots/explanations.json"} <= plots  # run.py's own run draws them too
    logged = json.loads(Path(client.download_artifacts(run_id, "plots/explanations.json", str(tmp_path))).read_text())
    assert (logged["images"], logged["steps"]) == (50, 6)  # as viz.explain_images and viz.explain_steps said

    out = tmp_path / "explained"
    result = subprocess.run([sys.executable, "-m", "pipeline.explain", "--run", run_id, "--tracking-uri",
                             tracking_uri, "--images", "0,5", "--sample", "120", "--steps", "8", "--out", str(out)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(word in result.stdout for word in ("grad_cam", "drop vs random", "re-init drop", "sanity rho"))
    assert (out / "explanations.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "explanations.json").read_text())
    assert saved["images"] == 120 and saved["test_images"] == 360 and saved["steps"] == 8
    for method in ("saliency", "integrated_gradients", "grad_cam"):
        assert saved[f"deletion_drop_{method}"] == pytest.approx(
            saved["accuracy_random_mask"] - saved[f"accuracy_masked_{method}"])
        assert -1 <= saved[f"sanity_spearman_{method}"] <= 1
        assert -1 <= saved[f"deletion_drop_{method}_reinitialised"] <= 1
    assert saved["control_drop_brightest"] == pytest.approx(
        saved["accuracy_random_mask"] - saved["accuracy_masked_brightest"])
    metrics = client.get_run(run_id).data.metrics
    assert metrics["explain/deletion_drop_grad_cam"] == pytest.approx(saved["deletion_drop_grad_cam"])
    assert metrics["explain/sanity_spearman_saliency"] == pytest.approx(saved["sanity_spearman_saliency"])
    assert {"explanations/explanations.png", "explanations/explanations.json"} <= {
        item.path for item in client.list_artifacts(run_id, "explanations")}


def test_a_model_without_convolutions_gets_no_grad_cam_and_says_why(train_tiny, tracking_uri, tmp_path, capsys):
    run_id = train_tiny("model=mlp")
    assert main(["--run", run_id, "--tracking-uri", tracking_uri, "--sample", "60", "--steps", "4",
                 "--out", str(tmp_path / "mlp")]) == 0
    saved = json.loads((tmp_path / "mlp" / "explanations.json").read_text())
    assert "deletion_drop_grad_cam" not in saved and "no convolutional layer" in saved["grad_cam"]
    assert "grad_cam: skipped" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, reason", [(["data=moons"], "not images"),
                                                (["task=reconstruct", "model=linear_autoencoder"],
                                                 "task=reconstruct")])
def test_a_run_that_is_not_an_image_classifier_is_refused_in_one_line(train_tiny, tracking_uri, capsys,
                                                                       overrides, reason):
    run_id = train_tiny(*overrides, "trainer.max_epochs=1")
    assert main(["--run", run_id, "--tracking-uri", tracking_uri]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and reason in error and "image classifiers" in error


def test_an_unknown_run_is_refused_in_one_line(tracking_uri, capsys):
    assert main(["--run", "0123456789abcdef", "--tracking-uri", tracking_uri]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: run 0123456789abcdef") and "\n" not in error


def test_grad_cam_reads_the_last_convolution_the_forward_pass_runs():
    class Block(nn.Module):  # like a ResNet block: the shortcut is registered last but runs first
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.shortcut = nn.Conv2d(1, 2, 1)

        def forward(self, x):
            return self.conv(self.shortcut(x)).mean((2, 3))

    block = Block()
    assert last_conv(block, torch.zeros(1, 1, 4, 4)) is block.conv and last_conv(block) is block.shortcut


def test_masked_pixels_are_black_after_the_data_normalisation(compose_config):
    from hydra.utils import instantiate

    cifar = instantiate(compose_config("data=cifar10").data)  # per-channel mean and std; no files needed here
    black = black_value(cifar, 3)
    assert torch.allclose(cifar.unit_pixels(black), torch.zeros(1, 3, 1, 1), atol=1e-6) and (black < 0).all()
