"""One figure of what a classifier looks at: per chosen test image, the image, then each attribution method's map
(saliency and integrated gradients as absolute values summed over channels, Grad-CAM over the image), titled with
each method's checks: its deletion drop beyond random masking and its rank correlation with a re-initialised model."""
from pathlib import Path

import torch

from pipeline.explanations import pixel_importance
from pipeline.viz import pyplot, save

TITLES = {"saliency": "saliency |grad|", "integrated_gradients": "integrated gradients",
          "grad_cam": "Grad-CAM (last conv)"}


def _display(image: torch.Tensor):
    """(C, H, W) min-max scaled to [0, 1]: grey for one channel, colour for three."""
    image = image.detach().float()
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    return (image.permute(1, 2, 0).numpy(), None) if image.shape[0] == 3 else (image.mean(0).numpy(), "gray")


def plot_explanations(images: torch.Tensor, labels, predictions, maps: dict[str, torch.Tensor],
                      class_names: list[str], results: dict, path: Path, dpi: int = 110) -> Path:
    """`maps`: per method, attributions shaped like `images` (Grad-CAM's with one channel)."""
    plt = pyplot()
    columns = 1 + len(maps)
    figure, axes = plt.subplots(len(images), columns, figsize=(2.1 * columns, 2.1 * len(images) + 0.6),
                                squeeze=False)
    for row, image in enumerate(images):
        picture, cmap = _display(image)
        axes[row, 0].imshow(picture, cmap=cmap)
        axes[row, 0].set_title(f"{class_names[int(labels[row])]} -> {class_names[int(predictions[row])]}",
                               fontsize=8)
        for column, (method, attributions) in enumerate(maps.items(), start=1):
            heat = pixel_importance(attributions[row : row + 1])[0].numpy()
            axis = axes[row, column]
            if method == "grad_cam":
                axis.imshow(picture, cmap=cmap)
                axis.imshow(heat, cmap="jet", alpha=0.5)
            else:
                axis.imshow(heat, cmap="hot")
            if row == 0:
                drop, rho = results.get(f"deletion_drop_{method}"), results.get(f"sanity_spearman_{method}")
                checks = "" if drop is None else f"\ndeletion drop {drop:+.2f}\nre-init rho {rho:.2f}"
                axis.set_title(TITLES[method] + checks, fontsize=8)
    for axis in axes.flat:
        axis.axis("off")
    note = f"; {results['grad_cam']}" if isinstance(results.get("grad_cam"), str) else ""
    figure.suptitle(f"true -> predicted; maps for the predicted class{note}", fontsize=8)
    return save(figure, path, dpi)


def test_split(datamodule) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole test split as the model reads it (normalised), with its labels."""
    images, labels = zip(*datamodule.test_dataloader())
    return torch.cat(images), torch.cat(labels)


def explanation_files(model, datamodule, folder: Path, shown=(0, 1, 2, 3), sample: int = 300, steps: int = 50,
                      seed: int = 0, dpi: int = 110) -> tuple[dict, list[Path]]:
    """Explain `model` on the test images `shown` (explanations.png) and run the deletion test and sanity check on
    a seeded sample of `sample` test images (explanations.json): (results, [png, json]). A model that averages
    test-time views is explained on each image as it is (explanations.one_view)."""
    from pipeline.explanations import attribute, black_value, explain, methods_for, one_view, predicted
    from pipeline.files import write_json

    x, y = test_split(datamodule)
    chosen = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:sample]
    value = black_value(datamodule, x.shape[1])
    with one_view(model) as views:
        results, _ = explain(model, x[chosen], y[chosen], value, steps, seed=seed)
        shown = torch.tensor([index for index in shown if index < len(x)], dtype=torch.long)
        target = predicted(model, x[shown])
        maps = {method: attribute(model, x[shown], target, method, value, steps) for method in methods_for(model)}
    results = {"test_images": len(x), **results}
    if views != 1:
        results["views"] = f"each image as it is (the test averaged {views} views of it)"
    names = list(getattr(datamodule, "class_names", None) or range(int(y.max()) + 1))
    figure = plot_explanations(x[shown], y[shown], target, maps, [str(name) for name in names], results,
                               folder / "explanations.png", dpi)
    return results, [figure, write_json(folder / "explanations.json", results)]
