"""Reconstruction (lab 6): an autoencoder learns to give back its input through a small code; it is measured by
the test error, PSNR, and the error of PCA with the same code size on the same split, the linear baseline every
autoencoder must beat."""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric

from pipeline.checks import model_name
from pipeline.errors import ConfigError
from pipeline.tasks.base import STAGES, ImageTask

LOSSES = ("mse", "bce")


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB of pixels in [0, 1]: 10·log10(1 / MSE)."""
    return 10 * math.log10(1 / mse) if mse > 0 else math.inf


def pca_error(train: torch.Tensor, test: torch.Tensor, components: int, seed: int) -> float:
    """Mean squared error per pixel of the test images rebuilt from their first `components` principal
    components, fitted on the training images (scikit-learn's randomized PCA: seconds on MNIST)."""
    from sklearn.decomposition import PCA

    components = min(components, *train.flatten(1).shape)
    pca = PCA(components, svd_solver="randomized", random_state=seed).fit(train.flatten(1).numpy())
    rebuilt = pca.inverse_transform(pca.transform(test.flatten(1).numpy()))
    return float(((torch.from_numpy(rebuilt) - test.flatten(1)) ** 2).mean())


class Rebuilt(nn.Module):
    """The logged model: pixels in [0, 1] in, their reconstruction in [0, 1] out (BCE-trained models give
    logits, which a sigmoid turns into pixels)."""

    def __init__(self, model: nn.Module, logits: bool):
        super().__init__()
        self.model, self.logits = model, logits

    def forward(self, x):
        out = self.model(x)
        return torch.sigmoid(out) if self.logits else out


class Reconstruction(ImageTask):
    """Trains an autoencoder (a model with encode(), decode() and code_size) on `loss`: mse, or bce (binary
    cross-entropy of the output as logits against pixels in [0, 1]). Logged per epoch: `<stage>/loss`,
    `<stage>/mse` (per pixel, in [0, 1] pixel units, whichever the loss); on test also `test/psnr`,
    `test/pca_mse` (PCA with code_size components, fitted on at most `pca_samples` training images) and
    `test/mse_over_pca` (below 1: the autoencoder beats PCA)."""

    name = "reconstruct"
    losses = LOSSES

    def __init__(self, model: nn.Module, optimizer, scheduler=None, loss: str = "mse", pca_samples: int = 20000,
                 monitor: str = "val/loss", mode: str = "min", log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        self.loss_name = loss
        self.pca_samples = pca_samples
        self.mse = nn.ModuleDict({stage: MeanMetric() for stage in STAGES})

    def reconstruct(self, x):
        """The model's output as pixels: what the MSE, PSNR and plots measure."""
        out = self.model(x)
        return out, (torch.sigmoid(out) if self.loss_name == "bce" else out)

    def _step(self, batch, stage: str):
        x = self.unit_pixels(batch[0])
        out, rebuilt = self.reconstruct(x)
        if self.loss_name == "bce":
            loss = F.binary_cross_entropy_with_logits(out, x)
        else:
            loss = F.mse_loss(out, x)
        self.log_loss(stage, loss, len(x))
        self.log_epoch_metric(f"{stage}/mse", self.mse[stage + "_"], F.mse_loss(rebuilt.detach(), x), len(x))
        return loss

    def on_test_epoch_end(self):
        mse = float(self.mse["test_"].compute())
        datamodule = self.trainer.datamodule
        train = datamodule.unit_pixels(datamodule.splits["train"][0][: self.pca_samples])
        test, _ = self.test_images(datamodule)
        pca = pca_error(train, test, self.model.code_size, seed=0)
        self.log_dict({"test/psnr": psnr(mse), "test/pca_mse": pca, "test/pca_psnr": psnr(pca),
                       "test/mse_over_pca": mse / pca if pca > 0 else math.inf})
        super().on_test_epoch_end()

    # --- what the pipeline asks of the task ---------------------------------------------------------
    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        out = model(inputs)
        if isinstance(out, tuple):
            raise ConfigError(f"model {model_name(cfg)} outputs a tuple, as a VAE does: train it with task=vae; "
                              "task=reconstruct trains autoencoders (model=conv_autoencoder, linear_autoencoder)")
        if not all(hasattr(model, name) for name in ("encode", "decode", "code_size")):
            raise ConfigError(f"model {model_name(cfg)} has no encode/decode/code_size: task=reconstruct trains "
                              "autoencoders (model=conv_autoencoder, linear_autoencoder)")
        if out.shape != inputs.shape:
            raise ConfigError(f"model {model_name(cfg)} outputs {list(out.shape[1:])} for inputs of shape "
                              f"{list(inputs.shape[1:])}: task=reconstruct needs the input's shape back")

    @torch.no_grad()
    def codes_and_reconstructions(self, datamodule, limit: int = 5000):
        self.model.eval()
        x, labels = self.test_images(datamodule, limit)
        code = self.model.encode(x)
        code = code[0] if isinstance(code, tuple) else code  # conv: (code, pooling indices)
        return x, self.reconstruct(x)[1], code, labels

    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """Test inputs over their reconstructions, and the test codes in 2-D coloured by class."""
        from pipeline.viz.reconstruction import plot_codes_2d, plot_reconstructions

        x, rebuilt, codes, labels = self.codes_and_reconstructions(datamodule)
        return [plot_reconstructions(x, rebuilt, folder / "reconstructions.png", viz.dpi),
                plot_codes_2d(codes, labels, datamodule.class_names, folder / "codes.png", viz.dpi)]

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        x, _ = self.test_images(datamodule, 8)
        return (Rebuilt(self.model, self.loss_name == "bce"), x,
                {"inputs": "pixels in [0, 1]", "outputs": "the reconstruction, pixels in [0, 1]"})
