"""The variational autoencoder's task (Kingma & Welling): maximise the ELBO, reported as its negative in nats
per image: the reconstruction term (BCE summed over pixels in [0, 1]) plus the KL divergence of q(z | x) from the
prior N(0, I)."""
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric

from pipeline.errors import ConfigError
from pipeline.models.vae import kl_divergence
from pipeline.checks import model_name
from pipeline.tasks.base import STAGES, ImageTask


class Generator(nn.Module):
    """The logged model: a latent vector z (draw it from N(0, I)) in, an image of pixel probabilities out."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z):
        return torch.sigmoid(self.vae.decode(z))


class VariationalAutoencoder(ImageTask):
    """Trains a VAE (a model whose forward gives (logits, mu, logvar), with decode() and latent_dim). Logged per
    epoch: `<stage>/loss` (the negative ELBO, nats per image), `<stage>/reconstruction` and `<stage>/kl` (its two
    terms). Validation and test draw z too, so their loss is the same one-sample estimate as training's."""

    name = "vae"

    def __init__(self, model: nn.Module, optimizer, scheduler=None, samples: int = 64, monitor: str = "val/loss",
                 mode: str = "min", log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        self.samples = samples
        # The negative ELBO's two terms; the loss itself is the base's mean_loss.
        self.terms = nn.ModuleDict({f"{stage}{term}": MeanMetric() for stage in STAGES
                                    for term in ("reconstruction", "kl")})

    def _step(self, batch, stage: str):
        x = self.unit_pixels(batch[0])
        logits, mu, logvar = self.model(x)
        reconstruction = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = kl_divergence(mu, logvar)
        loss = (reconstruction + kl).mean()
        self.log_loss(stage, loss, len(x))
        for term, value in (("reconstruction", reconstruction.mean()), ("kl", kl.mean())):
            self.log_epoch_metric(f"{stage}/{term}", self.terms[f"{stage}_{term}"], value.detach(), len(x))
        return loss

    # --- what the pipeline asks of the task ---------------------------------------------------------
    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        out = model(inputs)
        if not (isinstance(out, tuple) and len(out) == 3 and hasattr(model, "decode") and hasattr(model, "latent_dim")
                and out[0].shape == inputs.shape):
            raise ConfigError(f"model {model_name(cfg)} is not a VAE: task=vae trains a model that gives "
                              "(logits shaped like the input, mu, logvar) and decodes latent vectors "
                              "(model=vae, conv_vae)")

    def prior_samples(self, count: int) -> torch.Tensor:
        """`count` images decoded from z ~ N(0, I), drawn with a fixed seed so plots compare across runs."""
        z = torch.randn(count, self.model.latent_dim, generator=torch.Generator().manual_seed(0))
        return torch.sigmoid(self.model.decode(z.to(self.device)))

    @torch.no_grad()
    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """Samples from the prior, test reconstructions (decoded from the posterior mean), the test posterior
        means in 2-D coloured by class, and for a 2-D latent the decoded manifold."""
        from pipeline.viz.generative import plot_image_grid, plot_manifold
        from pipeline.viz.reconstruction import plot_codes_2d, plot_reconstructions

        self.model.eval()
        x, labels = self.test_images(datamodule, 5000)
        mu, _ = self.model.encode(x)
        paths = [plot_image_grid(self.prior_samples(self.samples), folder / "samples.png", viz.dpi,
                                 title="samples from the prior"),
                 plot_reconstructions(x, torch.sigmoid(self.model.decode(mu)), folder / "reconstructions.png",
                                      viz.dpi),
                 plot_codes_2d(mu, labels, datamodule.class_names, folder / "latent.png", viz.dpi,
                               title="test posterior means")]
        if self.model.latent_dim == 2:
            paths.append(plot_manifold(lambda z: torch.sigmoid(self.model.decode(z)), folder / "manifold.png",
                                       viz.dpi))
        return paths

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        z = torch.randn(8, self.model.latent_dim, generator=torch.Generator().manual_seed(0))
        return (Generator(self.model), z,
                {"inputs": f"latent vectors z of size {self.model.latent_dim}, drawn from N(0, I)",
                 "outputs": "images of pixel probabilities in [0, 1]"})
