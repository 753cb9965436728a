"""The autoencoder, generative and embedding plots: each writes a PNG that reads back, shows pixel values as they
are (no rescaling), decodes the latent grid in one call, and refuses malformed input with a clear ValueError."""
import matplotlib.image
import numpy as np
import pytest
import torch

from pipeline.viz.embeddings import plot_word_projection
from pipeline.viz.generative import plot_image_grid, plot_manifold
from pipeline.viz.reconstruction import plot_codes_2d, plot_reconstructions

torch.manual_seed(0)


def read_png(path):
    """The written picture as an (H, W, 4) array, after checking it is a plausible, non-blank PNG."""
    assert path.exists() and path.stat().st_size > 1000
    picture = matplotlib.image.imread(path)
    assert picture.ndim == 3 and 100 < picture.shape[0] < 3000 and 100 < picture.shape[1] < 3000
    assert picture[..., :3].std() > 0.01
    return picture


def grey_share(picture, level=0.5):
    """Share of pixels that are the given grey (within 1/100)."""
    return (np.abs(picture[..., :3] - level) < 0.01).all(axis=-1).mean()


@pytest.mark.parametrize("channels", [1, 3])
def test_reconstructions_show_values_unscaled(tmp_path, channels):
    # A constant mid-grey batch: min-max rescaling would turn it black, clamping keeps it grey.
    inputs = torch.full((12, channels, 16, 16), 0.5)
    outputs = inputs.clone()
    outputs[:, :, :8] = 2.0  # overshoot: clamped to white, not an error
    path = plot_reconstructions(inputs, outputs, tmp_path / "reconstructions.png")
    assert path == tmp_path / "reconstructions.png"
    assert grey_share(read_png(path)) > 0.1


def test_reconstructions_refuse_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="outputs must have the inputs' shape"):
        plot_reconstructions(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 9), tmp_path / "r.png")
    with pytest.raises(ValueError, match=r"inputs must be .* C = 1 or 3, got shape \(4, 2, 8, 8\)"):
        plot_reconstructions(torch.rand(4, 2, 8, 8), torch.rand(4, 2, 8, 8), tmp_path / "r.png")
    with pytest.raises(ValueError, match="inputs must be"):
        plot_reconstructions(torch.rand(4, 64), torch.rand(4, 64), tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("size", [1, 2, 16])
def test_codes_in_any_width(tmp_path, size):
    labels = torch.arange(300) % 3
    codes = torch.randn(300, size) + labels[:, None].float() * 3
    path = plot_codes_2d(codes, labels, ["zero", "one", "two"], tmp_path / "codes.png")
    read_png(path)


def test_codes_keep_at_most_5000_points_and_many_classes(tmp_path):
    labels = torch.arange(6000) % 15
    read_png(plot_codes_2d(torch.randn(6000, 4), labels, [f"class {i}" for i in range(15)], tmp_path / "c.png"))


def test_codes_refuse_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"codes must be \(N, D\) and labels \(N,\)"):
        plot_codes_2d(torch.randn(10, 2, 2), torch.zeros(10, dtype=torch.long), ["a"], tmp_path / "c.png")
    with pytest.raises(ValueError, match=r"got \(10, 2\) and \(9,\)"):
        plot_codes_2d(torch.randn(10, 2), torch.zeros(9, dtype=torch.long), ["a"], tmp_path / "c.png")
    with pytest.raises(ValueError, match="labels must lie in 0 .. 1"):
        plot_codes_2d(torch.randn(10, 2), torch.arange(10), ["a", "b"], tmp_path / "c.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid(tmp_path, channels):
    read_png(plot_image_grid(torch.rand(20, channels, 12, 12), tmp_path / "samples.png", title="prior samples"))
    with pytest.raises(ValueError, match="images must be"):
        plot_image_grid(torch.rand(20, 12, 12), tmp_path / "bad.png")


def test_manifold_decodes_a_symmetric_quantile_grid_once(tmp_path):
    calls = []

    def decode(z):
        calls.append((z.clone(), torch.is_grad_enabled()))
        # brightness follows z1, so the tiled picture is a left-to-right ramp
        return torch.sigmoid(z[:, :1, None, None]).expand(len(z), 1, 10, 10)

    read_png(plot_manifold(decode, tmp_path / "manifold.png", steps=15))
    assert len(calls) == 1
    z, grad_enabled = calls[0]
    assert z.shape == (225, 2) and not grad_enabled
    edge = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(0.95)).item()
    assert edge == pytest.approx(1.6449, abs=1e-4)
    assert z.min().item() == pytest.approx(-edge) and z.max().item() == pytest.approx(edge)
    assert z.sum(dim=0).abs().max().item() < 1e-4  # symmetric around 0
    corners = {tuple(round(v, 4) for v in z[i].tolist()) for i in (0, 14, 210, 224)}
    e = round(edge, 4)
    assert corners == {(-e, -e), (-e, e), (e, -e), (e, e)}
    assert len({tuple(row) for row in z.tolist()}) == 225  # every grid point once


def test_manifold_refuses_wrong_decoder_output(tmp_path):
    with pytest.raises(ValueError, match=r"one image per latent point \(16\), got 4"):
        plot_manifold(lambda z: torch.rand(4, 1, 8, 8), tmp_path / "m.png", steps=4)
    with pytest.raises(ValueError, match="decode\\(z\\) must be"):
        plot_manifold(lambda z: torch.rand(len(z), 64), tmp_path / "m.png", steps=4)


@pytest.mark.parametrize("size", [2, 32])
def test_word_projection(tmp_path, size):
    words = [f"word{i}" for i in range(200)]
    read_png(plot_word_projection(words, torch.randn(200, size), tmp_path / "words.png", count=50))


def test_word_projection_refuses_mismatched_vocabulary(tmp_path):
    with pytest.raises(ValueError, match=r"one row per word, got shape \(10, 8\) for 9 words"):
        plot_word_projection([f"w{i}" for i in range(9)], torch.randn(10, 8), tmp_path / "w.png")


def test_a_tight_figure_is_drawn_once_to_measure_and_once_to_render(tmp_path):
    """tight_layout measures with one draw; savefig must not draw the figure a third time (it does while the
    figure keeps the placeholder layout engine tight_layout leaves)."""
    from pipeline.viz import pyplot, save

    figure, axis = pyplot().subplots()
    axis.imshow(np.arange(16).reshape(4, 4))
    axis.set_title("a title that tight_layout must make room for")
    draws = []
    figure.canvas.mpl_connect("draw_event", lambda event: draws.append(event))
    save(figure, tmp_path / "tight.png")
    assert len(draws) == 1  # the rendering; tight_layout's measuring pass emits no draw event
    assert read_png(tmp_path / "tight.png").shape[:2] == (528, 704)  # 6.4 x 4.8 inches at 110 dpi


def test_the_explanations_mosaic_puts_each_map_beside_its_image():
    """Per row: the image min-max scaled; |attributions| summed over channels in `hot`; Grad-CAM in `jet` at half
    opacity over the image — what a grid of axes showed, as one picture (viz/explanations.py)."""
    from matplotlib import colormaps

    from pipeline.viz.explanations import mosaic

    images = torch.rand(2, 3, 6, 5)
    saliency, cam = torch.randn(2, 3, 6, 5), torch.rand(2, 1, 6, 5)
    picture, tops, lefts = mosaic(images, {"saliency": saliency, "grad_cam": cam}, gap=2, band=3, header=4)
    assert picture.shape == (4 + 6 + 3 + 6, 3 * 5 + 2 * 2, 3) and tops == [4, 13] and lefts == [0, 7, 14]

    def scaled(values):
        return (values - values.min()) / (values.max() - values.min())

    row, top = 1, 13
    image = scaled(images[row]).permute(1, 2, 0)
    heat = torch.from_numpy(colormaps["hot"](scaled(saliency[row].abs().sum(0)).numpy())[..., :3]).float()
    jet = torch.from_numpy(colormaps["jet"](scaled(cam[row, 0]).numpy())[..., :3]).float()
    torch.testing.assert_close(picture[top : top + 6, 0:5], image, atol=1e-6, rtol=0)
    torch.testing.assert_close(picture[top : top + 6, 7:12], heat, atol=1e-6, rtol=0)
    torch.testing.assert_close(picture[top : top + 6, 14:19], 0.5 * jet + 0.5 * image, atol=1e-6, rtol=0)
    assert (picture[:4] == 1).all() and (picture[10:13] == 1).all() and (picture[:, 5:7] == 1).all()  # white bands
