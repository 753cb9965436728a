"""Explanations of an image classifier that are checked, not only drawn: saliency, integrated gradients and Grad-CAM
(captum), a deletion test (does masking the most-attributed pixels hurt accuracy more than masking random ones?)
and the weight-randomisation sanity check of Adebayo et al. 2018 (do the maps change when the weights are noise?)."""
import contextlib
import copy
import math

import torch
from torch import nn

from pipeline.models.parts import is_convolution

METHODS = ("saliency", "integrated_gradients", "grad_cam")
FRACTION = 0.1  # the share of pixels the deletion test masks
ROWS_BUDGET = 2**20  # input numbers per integrated-gradients pass (4 MB of float32)


def last_conv(model: nn.Module, x: torch.Tensor | None = None) -> nn.Conv2d | None:
    """The layer Grad-CAM reads: the last convolution, whose maps are still spatial and most class-specific. With
    an input `x`, the last one the forward pass runs (a ResNet registers its shortcut convolutions after the
    blocks' own); without, the last one registered."""
    convs = [module for module in model.modules() if is_convolution(module)]
    if x is None or not convs:
        return convs[-1] if convs else None
    ran = []
    hooks = [conv.register_forward_hook(lambda module, inputs, output: ran.append(module)) for conv in convs]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return ran[-1] if ran else convs[-1]


def methods_for(model: nn.Module) -> tuple[str, ...]:
    """Grad-CAM needs a convolution; saliency and integrated gradients work on any differentiable model."""
    return METHODS if last_conv(model) is not None else METHODS[:2]


def attribute(model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, baseline: torch.Tensor,
              steps: int = 50) -> torch.Tensor:
    """Attributions shaped like `x` (N, C, H, W) for each image's `target` class; Grad-CAM's map (N, 1, H, W) is
    upsampled bilinearly from the last convolution's resolution. `baseline`: integrated gradients' start image."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    model.eval()
    x = x.detach().clone().requires_grad_()  # captum warns when it has to switch this on itself
    scores = summed_target_scores(model)
    targets = (torch.as_tensor(target).expand(len(x)).to(x.device),)  # handed to `scores` beside each batch
    if method == "saliency":  # the raw input gradient (signed): d score / d pixel
        return Saliency(scores).attribute(x, additional_forward_args=targets, abs=False).detach()
    if method == "integrated_gradients":
        # As many steps per forward pass as keep the batch's inputs near ROWS_BUDGET numbers: few large passes for
        # small images (digits: all 50 steps in one), one step of all images at a time for large ones.
        steps_per_pass = min(steps, max(1, ROWS_BUDGET // (len(x) * x[0].numel())))
        return IntegratedGradients(scores).attribute(x, baselines=baseline.expand_as(x), n_steps=steps,
                                                     additional_forward_args=targets,
                                                     internal_batch_size=len(x) * steps_per_pass).detach()
    if method == "grad_cam":
        conv = last_conv(model, x)
        if conv is None:
            raise ValueError("Grad-CAM needs a convolutional layer; this model has none")
        cam = LayerGradCam(scores, conv).attribute(x, additional_forward_args=targets, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear").detach()
    raise ValueError(f"unknown attribution method {method}: choose one of {', '.join(METHODS)}")


def summed_target_scores(model: nn.Module):
    """What captum differentiates: the score of each example's target class, summed over the batch (shape [1]).
    In eval mode the examples are independent, so the gradient for each input is its own score's; captum then takes
    it in one backward pass, where with a score per example (target=) it splits the output into one scalar per
    example and integration step first (15,000 for 300 digits, 0.1 s of Python per pass: 3-7x the whole pass)."""

    def forward(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return model(inputs).gather(1, target[:, None]).sum().reshape(1)

    return forward


@contextlib.contextmanager
def one_view(model: nn.Module):
    """Within: `model` reads each image as it is, once; yields how many views it averaged (1 for a model without
    test-time views). A model that averages test-time views (mirrored, shifted copies; `test_time_views`) has no
    single map of the image to explain, and Grad-CAM would read only the last view's pass through its layer (a
    mirrored one: its map comes out mirrored). Explaining one view is also as many times cheaper as there are
    views."""
    views = getattr(model, "test_time_views", None)
    if views is None:
        yield 1
        return
    model.test_time_views = 1
    try:
        yield views
    finally:
        model.test_time_views = views


def pixel_importance(attributions: torch.Tensor) -> torch.Tensor:
    """One value per pixel (N, H, W): the channels' absolute attributions summed."""
    return attributions.abs().sum(dim=1)


def black_value(datamodule, channels: int) -> torch.Tensor:
    """What a black pixel is after the data's normalisation (1, C, 1, 1): the masked value and IG's baseline."""
    zero = datamodule.unit_pixels(torch.zeros(1, channels, 1, 1))
    one = datamodule.unit_pixels(torch.ones(1, channels, 1, 1))
    return -zero / (one - zero)  # unit_pixels is affine per channel: solve unit_pixels(v) = 0


def top_pixels(importance: torch.Tensor, fraction: float = FRACTION) -> torch.Tensor:
    """A boolean mask (N, 1, H, W) of each image's `fraction` most important pixels."""
    flat = importance.flatten(1)
    count = max(1, math.ceil(fraction * flat.shape[1]))
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask.scatter_(1, flat.topk(count, dim=1).indices, True)
    return mask.view(len(importance), 1, *importance.shape[1:])


def random_pixels(shape: tuple[int, ...], fraction: float = FRACTION, seed: int = 0) -> torch.Tensor:
    """The same number of pixels per image as top_pixels, drawn at random (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return top_pixels(torch.rand(shape, generator=generator), fraction)


@torch.no_grad()
def predicted(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return int((predicted(model, x) == y).sum()) / len(x)


def masked(x: torch.Tensor, mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, value.expand_as(x), x)


def deletion_test(model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: dict[str, torch.Tensor],
                  value: torch.Tensor, fraction: float = FRACTION, seed: int = 0) -> dict[str, float]:
    """Accuracy on `x` as it is, after masking (to `value`) each image's `fraction` most-attributed pixels per
    method in `maps`, and after masking as many random pixels; a method's drop is how many points more its masking
    costs than random masking (a faithful explanation points at pixels the model needs)."""
    result = {"accuracy": accuracy(model, x, y)}
    result["accuracy_random_mask"] = accuracy(model, masked(x, random_pixels((len(x), *x.shape[2:]), fraction, seed),
                                                            value), y)
    # A control that asks nothing of the model: mask the pixels farthest from black (the ink). A method whose drop
    # is no larger than this one's may be showing the input rather than what the model uses.
    result["accuracy_masked_brightest"] = accuracy(model, masked(x, top_pixels(pixel_importance(x - value), fraction),
                                                                 value), y)
    result["control_drop_brightest"] = result["accuracy_random_mask"] - result["accuracy_masked_brightest"]
    for method, attributions in maps.items():
        result[f"accuracy_masked_{method}"] = accuracy(
            model, masked(x, top_pixels(pixel_importance(attributions), fraction), value), y)
        result[f"deletion_drop_{method}"] = result["accuracy_random_mask"] - result[f"accuracy_masked_{method}"]
    return result


def reinitialised(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` with every layer's weights drawn afresh (as before training), seeded."""
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for module in fresh.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return fresh


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation per image (ties share their mean rank) of two (N, H, W) maps."""
    from scipy.stats import rankdata

    ranks_a = torch.from_numpy(rankdata(a.flatten(1).numpy(), axis=1))
    ranks_b = torch.from_numpy(rankdata(b.flatten(1).numpy(), axis=1))
    ranks_a, ranks_b = ranks_a - ranks_a.mean(1, keepdim=True), ranks_b - ranks_b.mean(1, keepdim=True)
    return (ranks_a * ranks_b).sum(1) / (ranks_a.norm(dim=1) * ranks_b.norm(dim=1)).clamp_min(1e-12)


def attribution_maps(model: nn.Module, x: torch.Tensor, target: torch.Tensor, methods, baseline: torch.Tensor,
                     steps: int = 50) -> dict[str, torch.Tensor]:
    """Each method's attributions of `model` on `x` for the `target` classes."""
    return {method: attribute(model, x, target, method, baseline, steps) for method in methods}


def sanity_check(maps: dict[str, torch.Tensor], other_maps: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per method, how one model's attributions (`maps`) agree with another's (a re-initialised copy's, for the
    same images and targets): the mean over images of the Spearman correlation of the absolute maps. Near 0 means
    the maps depend on what was learned, near 1 that they show the input or the architecture whatever the weights."""
    return {method: float(rank_correlation(pixel_importance(maps[method]), pixel_importance(other_maps[method]))
                          .mean()) for method in maps}


def explain(model: nn.Module, x: torch.Tensor, y: torch.Tensor, value: torch.Tensor, steps: int = 50,
            seed: int = 0) -> tuple[dict, dict[str, torch.Tensor]]:
    """The deletion test on (x, y) and the sanity check, and each method's attributions for the predicted classes:
    (results, maps). The re-initialised model's maps also go through the deletion test: a method whose drop stays
    as large with them measures the input, not the model. `value`: a black pixel, the masked value and IG's
    baseline."""
    target = predicted(model, x)
    maps = attribution_maps(model, x, target, methods_for(model), value, steps)
    results = {"images": len(x), "fraction": FRACTION, "mask": "black (a pixel of 0 before normalisation)",
               "target": "predicted class", "steps": steps, **deletion_test(model, x, y, maps, value, seed=seed)}
    fresh = reinitialised(model, seed)
    fresh_maps = attribution_maps(fresh, x, target, maps, value, steps)
    results.update({f"sanity_spearman_{method}": correlation
                    for method, correlation in sanity_check(maps, fresh_maps).items()})
    with_fresh_maps = deletion_test(model, x, y, fresh_maps, value, seed=seed)
    results.update({f"deletion_drop_{method}_reinitialised": with_fresh_maps[f"deletion_drop_{method}"]
                    for method in maps})
    if "grad_cam" not in maps:
        results["grad_cam"] = "skipped: the model has no convolutional layer"
    return results, maps
