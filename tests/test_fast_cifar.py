"""The fast CIFAR-10 recipe (experiment=cifar10_cnn, issue 15): the whitening layer fitted from the data, the
test-time views, and the moving average of the weights that validation, the best checkpoint and the test use."""
import copy

import pytest
import torch

from pipeline import train
from pipeline.models.whitened import WhitenedCNN
from test_images import write_cifar


def correlated_images(count: int = 200) -> torch.Tensor:
    """Smooth images: neighbouring pixels and the three channels strongly correlated, as in photographs."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(count, 1, 8, 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return smooth.repeat(1, 3, 1, 1) + 0.1 * torch.randn(count, 3, 32, 32, generator=generator)


def test_the_whitening_filters_decorrelate_the_training_patches_and_are_not_learned():
    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16])
    images = correlated_images()
    model.initialise_from_data(images)
    with torch.no_grad():
        responses = torch.nn.functional.conv2d(images, model.whiten.weight[:12])  # the filters without their bias
    flat = responses.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = flat.T @ flat / len(flat)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)  # unit variance, uncorrelated
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])

    filters, bias = model.whiten.weight.clone(), model.whiten.bias.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(model(images[:16]), torch.arange(16) % 10).backward()
    optimizer.step()
    assert torch.equal(model.whiten.weight, filters) and not torch.equal(model.whiten.bias, bias)


def test_test_time_views_average_the_mirrored_and_shifted_images_in_eval_mode_only():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16], test_time_views=6).eval()
    one = model.logits
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[:, :, :32, :32], padded[:, :, 2:, 2:]]
    expected = (one(x) + one(x.flip(3))) / 4 + sum(one(view) + one(view.flip(3)) for view in shifted) / 8
    assert torch.allclose(model(x), expected, atol=1e-6)
    model.test_time_views = 2
    assert torch.allclose(model(x), model(x.flip(3)), atol=1e-6)  # a mirrored image gets the same answer
    assert torch.allclose(model.train()(x), one(x))  # training sees the image as it is


class HeldOutImages:
    """What the explanations read of a datamodule: the test split in batches, its pixel normalisation, the classes."""
    class_names = [str(index) for index in range(10)]

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def test_dataloader(self):
        return [(self.images[start:start + 8], self.labels[start:start + 8]) for start in range(0, len(self.images), 8)]

    def unit_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - 0.5) / 0.25


def test_a_model_with_test_time_views_is_explained_on_each_image_as_it_is(tmp_path):
    """Grad-CAM of a view-averaging model would read only the last (mirrored) view's pass; the explanations and
    their checks are of the network on the image itself, and the model keeps its views afterwards."""
    from pipeline.explain import table
    from pipeline.viz.explanations import explanation_files

    torch.manual_seed(0)
    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16], test_time_views=6).eval()
    network = copy.deepcopy(model)
    network.test_time_views = 1
    data = HeldOutImages(torch.randn(24, 3, 32, 32), torch.arange(24) % 10)
    viewed, _ = explanation_files(model, data, tmp_path, sample=16, steps=4)
    plain, _ = explanation_files(network, data, tmp_path, sample=16, steps=4)
    assert "explained: each image as it is (the test averaged 6 views of it)" in table(viewed)  # explain's stdout
    assert viewed.pop("views") == "each image as it is (the test averaged 6 views of it)"
    assert viewed == plain and "sanity_spearman_grad_cam" in plain
    assert model.test_time_views == 6


def test_the_whitening_bias_learns_for_its_epochs_then_stays_even_under_momentum():
    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16], whitening_bias_epochs=2)
    images, labels = correlated_images(16), torch.arange(16) % 10
    optimizer = torch.optim.SGD([p for p in model.parameters()], lr=0.1, momentum=0.9, weight_decay=0.01)

    def one_step():
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    for epoch in range(4):
        model.start_epoch(epoch)
        bias = model.whiten.bias.clone()
        one_step()
        assert torch.equal(model.whiten.bias, bias) == (epoch >= 2), epoch  # momentum alone would still move it
    with pytest.raises(ValueError, match=r"model.whitening_bias_epochs=-1 is invalid"):
        WhitenedCNN([3, 32, 32], 10, whitening_bias_epochs=-1)


def test_a_wrong_number_of_views_is_one_clear_error():
    with pytest.raises(ValueError, match=r"model.test_time_views=3 is invalid: must be one of \[1, 2, 6\]"):
        WhitenedCNN([3, 32, 32], 10, test_time_views=3)


def test_batchnorm_shifts_learn_faster_with_the_same_decay_per_step_and_the_schedule_keeps_the_ratio():
    import functools

    from pipeline.tasks.classify import Classifier

    model = WhitenedCNN([3, 32, 32], 10, widths=[8, 16, 16])
    optimizer = functools.partial(torch.optim.SGD, lr=1.5, momentum=0.85, nesterov=True, weight_decay=0.0013)
    task = Classifier(model, optimizer, num_classes=10, norm_bias_lr_scale=64)
    others, shifts = task.parameter_groups()
    norms = [module for module in model.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    assert {id(p) for p in shifts["params"]} == {id(norm.bias) for norm in norms}  # their scales are not trained
    assert not {id(p) for p in shifts["params"]} & {id(p) for p in others["params"]}
    assert shifts["lr"] == 1.5 * 64 and shifts["weight_decay"] == pytest.approx(0.0013 / 64)
    assert len(list(Classifier(model, optimizer, num_classes=10).parameter_groups())) == len(list(model.parameters()))

    with pytest.raises(Exception, match=r"task.norm_bias_lr_scale=0 is invalid: must be a number > 0"):
        Classifier(model, optimizer, num_classes=10, norm_bias_lr_scale=0)


def test_the_cifar10_experiment_trains_and_tests_the_weight_average(compose_config, tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=40, test=40)
    cfg = compose_config("experiment=cifar10_cnn", "logger=none", f"data.root={tmp_path}/data",
                         f"data.cache_dir={tmp_path}/cache", "data.download=false", "data.batch_size=32",
                         "data.val_fraction=0.2", "model.widths=[8,16,16]", "trainer.max_epochs=3",
                         "callbacks.weight_average.update_starting_at_epoch=0", "callbacks.weight_average.decay=0.5",
                         "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", "threads=1",
                         "task.norm_bias_lr_scale=64")
    train.start(cfg)
    datamodule = train.build_data(cfg)
    task = train.build_task(cfg, datamodule)
    fitted = task.model.whiten.weight.clone()
    task.model.initialise_from_data(datamodule.splits["train"][0])
    assert torch.equal(task.model.whiten.weight, fitted)  # build_task fitted it from the training images
    trainer = train.build_trainer(cfg, None)
    metrics, best = train.fit(trainer, task, datamodule)
    assert best and "val/acc_best" in metrics
    others, filters, shifts = trainer.optimizers[0].param_groups  # the one-cycle schedule moved all, keeping ratios
    assert filters["filter"] and not others["filter"] and not shifts["filter"]  # Muon steps the conv filters
    assert others["lr"] != cfg.optimizer.lr and shifts["lr"] == pytest.approx(64 * others["lr"])
    assert filters["lr"] == pytest.approx(others["lr"] * cfg.optimizer.filter_lr / cfg.optimizer.lr)
    trainer.test(task, datamodule=datamodule, ckpt_path="best", verbose=False)
    checkpoint = torch.load(best, weights_only=False)
    averaged, raw = checkpoint["state_dict"], checkpoint["current_model_state"]
    tested = task.state_dict()
    differs = [key for key in raw if raw[key].is_floating_point() and not torch.equal(raw[key], averaged[key])]
    assert differs  # the average is not the last weights...
    assert all(torch.equal(tested[key], averaged[key]) for key in averaged)  # ...and the test scored the average


def test_the_recipe_benchmark_times_whole_commands_and_reads_their_test_accuracy(tmp_path):
    import os
    import subprocess
    import sys

    from conftest import ROOT

    write_cifar(tmp_path / "data" / "cifar-10-batches-py", per_batch=220, test=40)
    env = {**os.environ, "PIPELINE_DATA_DIR": str(tmp_path / "data"), "PIPELINE_CACHE_DIR": str(tmp_path / "cache"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    result = subprocess.run([sys.executable, "benchmarks/cifar_recipe.py", "--quick", "--rows", "recipe", "--keep",
                             str(tmp_path / "kept"), "--", "logger=csv"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = [line.split() for line in result.stdout.splitlines() if line.startswith("recipe")]
    assert float(row[1]) > 0 and 0.0 <= float(row[3]) <= 1.0
    kept = (tmp_path / "kept" / "recipe" / ".hydra" / "overrides.yaml").read_text()  # --keep: the run's folder stays
    assert "trainer.max_epochs=1" in kept and "logger=csv" in kept


def test_the_model_yaml_names_exactly_the_networks_arguments():
    import inspect

    import yaml

    from conftest import CONF
    from pipeline.models.building import PIPELINE_KEYS

    keys = set(yaml.safe_load((CONF / "model" / "whitened_cnn.yaml").read_text())) - {"_target_", *PIPELINE_KEYS}
    assert keys == set(inspect.signature(WhitenedCNN).parameters)


def test_every_row_of_the_recipe_benchmark_composes(compose_config):
    """A row is a list of overrides of experiment=cifar10_cnn: each must name keys the recipe has (or adds one)."""
    import importlib.util

    from pipeline.averaging import WeightAverage

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("cifar_recipe", ROOT / "benchmarks" / "cifar_recipe.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    for name, overrides in recipe.ROWS.items():
        cfg = compose_config("experiment=cifar10_cnn", *overrides)
        assert cfg.experiment_name == "cifar10_cnn", name
    built = train.build_callbacks(compose_config("experiment=cifar10_cnn", *recipe.ROWS["lookahead_instead"]))
    assert {type(callback).__name__ for callback in built} >= {"Lookahead"} and not any(
        isinstance(callback, WeightAverage) for callback in built)
