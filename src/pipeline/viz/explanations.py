"""One figure of what a classifier looks at: per chosen test image, the image, then each attribution method's map
(saliency and integrated gradients as absolute values summed over channels, Grad-CAM over the image), titled with
each method's checks: its deletion drop beyond random masking and its rank correlation with a re-initialised model."""
import math
from pathlib import Path

import torch

from pipeline.explanations import pixel_importance
from pipeline.viz import pyplot, save

TITLES = {"saliency": "saliency |grad|", "integrated_gradients": "integrated gradients",
          "grad_cam": "Grad-CAM (last conv)"}


def _display(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) min-max scaled to [0, 1], as RGB (H, W, 3): grey for one channel, colour for three."""
    image = image.detach().float()
    image = (image - image.min()) / (image.max() - image.min() + 1e-8)
    return image.permute(1, 2, 0) if image.shape[0] == 3 else image.mean(0)[..., None].expand(-1, -1, 3)


def _coloured(values: torch.Tensor, colormap: str) -> torch.Tensor:
    """(H, W) through a matplotlib colormap, scaled to its own range as imshow scales it: (H, W, 3)."""
    from matplotlib import colormaps

    values = (values - values.min()) / (values.max() - values.min() + 1e-12)
    return torch.from_numpy(colormaps[colormap](values.numpy())[..., :3]).float()


def _panel(picture: torch.Tensor, method: str, attributions: torch.Tensor) -> torch.Tensor:
    """A method's map (H, W, 3): |attribution| in `hot`, Grad-CAM in `jet` at half opacity over the image."""
    heat = pixel_importance(attributions[None])[0]
    if method == "grad_cam":
        return 0.5 * _coloured(heat, "jet") + 0.5 * picture
    return _coloured(heat, "hot")


def mosaic(images: torch.Tensor, maps: dict[str, torch.Tensor], gap: int, band: int, header: int):
    """Per image a row: the image, then each method's map; `gap` pixels between columns, `band` above each row (its
    title) and `header` above the first (the methods' titles). (mosaic (H, W, 3), each row's top, each column's left)."""
    height, width = images.shape[-2:]
    tops = [header + row * (height + band) for row in range(len(images))]
    lefts = [column * (width + gap) for column in range(1 + len(maps))]
    picture = torch.ones(tops[-1] + height, lefts[-1] + width, 3)
    for row, image in enumerate(images):
        shown = _display(image)
        panels = [shown] + [_panel(shown, method, attributions[row]) for method, attributions in maps.items()]
        for left, panel in zip(lefts, panels):
            picture[tops[row] : tops[row] + height, left : left + width] = panel
    return picture, tops, lefts


def plot_explanations(images: torch.Tensor, labels, predictions, maps: dict[str, torch.Tensor],
                      class_names: list[str], results: dict, path: Path, dpi: int = 110) -> Path:
    """`maps`: per method, attributions shaped like `images` (Grad-CAM's with one channel). Drawn as one mosaic
    image on one axis, with the titles in white bands of it: an axis per panel cost 2x more to lay out and render."""
    plt = pyplot()
    height, width = images.shape[-2:]
    per_inch = height / 2.0  # each panel ~2 inches high, as a grid of axes drew it
    gap = max(1, round(0.1 * per_inch))
    picture, tops, lefts = mosaic(images, maps, gap, band=math.ceil(0.2 * per_inch), header=math.ceil(0.5 * per_inch))
    title_room = 0.3  # inches, for the figure's title
    size = (picture.shape[1] / per_inch, picture.shape[0] / per_inch + title_room)
    figure, axis = plt.subplots(figsize=size)
    axis.imshow(picture.numpy(), interpolation="nearest")
    for row, top in enumerate(tops):
        axis.text(width / 2, top - gap / 2, f"{class_names[int(labels[row])]} -> {class_names[int(predictions[row])]}",
                  ha="center", va="bottom", fontsize=8)
    for left, method in zip(lefts[1:], maps):
        drop, rho = results.get(f"deletion_drop_{method}"), results.get(f"sanity_spearman_{method}")
        checks = "" if drop is None else f"\ndeletion drop {drop:+.2f}\nre-init rho {rho:.2f}"
        axis.text(left + width / 2, tops[0] - gap / 2, TITLES[method] + checks, ha="center", va="bottom", fontsize=8)
    axis.axis("off")
    figure.subplots_adjust(left=0, right=1, bottom=0, top=1 - title_room / size[1])
    note = f"; {results['grad_cam']}" if isinstance(results.get("grad_cam"), str) else ""
    figure.suptitle(f"true -> predicted; maps for the predicted class{note}", fontsize=8, y=1 - 0.05 / size[1],
                    va="top")
    return save(figure, path, dpi, tight=False)


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
