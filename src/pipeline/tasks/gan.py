"""Generative adversarial networks (Goodfellow et al., 2014) with Lightning's manual optimisation: per batch one
discriminator step (real images → 1, generated → 0) then one generator step with the non-saturating loss (its
images → 1), each network with its own optimizer. GAN losses say who is winning, not how good the images are, so
quality is measured by a judge (pipeline/judge.py): a classifier of the real data."""
import logging
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn
from torchmetrics import MeanMetric

from pipeline.checks import model_name
from pipeline.errors import ConfigError
from pipeline.tasks.base import ImageTask, image_data_only
from pipeline.tasks.gan_scores import class_entropy, frechet_distance, inception_score

log = logging.getLogger(__name__)


class GAN(ImageTask):
    """Trains a model with `generator`, `discriminator` and `latent_dim` (model=dcgan) on images in [0, 1].

    Logged per epoch: train/loss_d, train/loss_g, train/d_real and train/d_fake (the discriminator's mean
    probability that real and generated images are real), val/frechet (the judge-feature Fréchet distance of
    `val_samples` samples to as many validation images: what "best" means), val/score, val/class_entropy, and a grid
    of samples from a fixed noise batch (MLflow: plots/samples/epoch_001.png, ...). At test, on `test_samples`
    samples and as many real images: test/score (the judge's Inception-style score) and test/score_real (the same
    on real test images), test/class_entropy, test/frechet (samples vs real test), test/frechet_train_test (real
    train vs real test: the floor a perfect generator reaches), test/judge_acc. The logged model is the generator.
    """

    name = "gan"
    # val/frechet by default (conf/task/gan.yaml); val/score (max) is the other choice.
    best_of = {"val/frechet": "min", "val/score": "max"}

    def __init__(self, model: nn.Module, optimizer, scheduler=None, judge: str | None = None,
                 judge_recipe: dict | None = None, cache_dir: str = "data/cache", seed: int = 0, samples: int = 64,
                 val_samples: int = 1000, test_samples: int = 10000, monitor: str = "val/frechet", mode: str = "min",
                 log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        for key, value, least in (("samples", samples, 1), ("val_samples", val_samples, 2),
                                  ("test_samples", test_samples, 2)):
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"task.{key}={value!r} is invalid: must be an integer >= {least}")
        self.automatic_optimization = False  # two optimizers, stepped in turn by training_step
        self.judge_run, self.judge_recipe, self.cache_dir, self.seed = judge, judge_recipe, cache_dir, seed
        self.val_samples, self.test_samples = val_samples, test_samples
        # The noise the per-epoch grids are drawn from: seeded, and a buffer, so checkpoints keep it.
        self.register_buffer("fixed_noise", self.noise(samples, seed))
        self.frames: list[torch.Tensor] = []  # one grid per epoch (uint8), kept in checkpoints (get_extra_state)
        self.terms = nn.ModuleDict({term: MeanMetric() for term in ("loss_d", "loss_g", "d_real", "d_fake")})
        self.val_frechet, self.val_score = MeanMetric(), MeanMetric()
        self.judge = None  # pipeline.judge.Judge, found or trained in setup(); not a submodule: never saved
        self.judged: dict[str, list[torch.Tensor]] = {}

    def noise(self, count: int, seed: int) -> torch.Tensor:
        """`count` latent vectors from N(0, I), the same for the same seed (a generator of their own: the global
        random state, which training draws from, is left as it was)."""
        return torch.randn(count, self.model.latent_dim, generator=torch.Generator().manual_seed(seed))

    # --- training: one discriminator step, then one generator step -----------------------------------------
    def training_step(self, batch, batch_idx):
        real = self.unit_pixels(batch[0])
        discriminator_optimizer, generator_optimizer = self.optimizers()
        fake = self.model.generate(torch.randn(len(real), self.model.latent_dim, device=real.device))
        loss_d, d_real, d_fake = self.discriminator_step(real, fake.detach(), discriminator_optimizer)
        loss_g = self.generator_step(fake, generator_optimizer)
        for term, value in (("loss_d", loss_d), ("loss_g", loss_g), ("d_real", d_real), ("d_fake", d_fake)):
            self.log_epoch_metric(f"train/{term}", self.terms[term], value.detach(), len(real),
                                  prog_bar=term.startswith("loss"))
            if self.log_every_step and term.startswith("loss"):
                self.log(f"train/{term}_step", value.detach(), on_step=True, on_epoch=False)

    def discriminator_step(self, real, fake, optimizer):
        """Teach the discriminator real → 1, generated → 0 (fake is detached: no gradient reaches the generator)."""
        real_logits, fake_logits = self.model.discriminator(real), self.model.discriminator(fake)
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean()

    def generator_step(self, fake, optimizer):
        """The non-saturating generator loss, -log D(G(z)): strong gradients while the discriminator still wins,
        where minimising log(1 - D(G(z))) would give almost none. Only the generator's optimizer steps."""
        logits = self.model.discriminator(fake)
        loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        return loss

    def configure_optimizers(self):
        """The optimizer group's partial, once per network: [discriminator's, generator's]."""
        return [self.optimizer(params=self.model.discriminator.parameters()),
                self.optimizer(params=self.model.generator.parameters())]

    # --- validation and test: the judge's view of samples and of real images -------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        self.find_judge(self.trainer.datamodule)

    def find_judge(self, datamodule):
        """The judge task.judge names, or one trained here (cached) when it is null."""
        from pipeline import judge

        if self.judge is None:
            if self.judge_run:
                self.judge = judge.judge_from_run(str(self.judge_run), datamodule.name, datamodule.input_shape,
                                                  datamodule.num_classes)
                log.info("judge: %s", self.judge.source)
            else:
                channels = datamodule.input_shape[0]
                mean = getattr(datamodule, "mean", torch.zeros(channels)).flatten().tolist()
                std = getattr(datamodule, "std", torch.ones(channels)).flatten().tolist()
                self.judge, _ = judge.trained_judge(datamodule.splits["train"], datamodule.splits["test"], mean,
                                                    std, datamodule.name, datamodule.num_classes,
                                                    self.judge_recipe, self.seed, self.cache_dir)
        return self.judge

    def judge_batch(self, batch, limit: int) -> None:
        """The judge's probabilities and features of this batch's real images and of as many samples (from the
        stage's seeded noise), until `limit` of each."""
        seen = sum(len(labels) for labels in self.judged.get("labels", []))
        real, labels = self.unit_pixels(batch[0])[: limit - seen], batch[1][: limit - seen]
        if len(real) == 0:
            return
        z = self.stage_noise[seen : seen + len(real)].to(real.device)
        for kind, images in (("real", real), ("fake", self.model.generate(z))):
            probabilities, features = self.judge(images)
            self.judged.setdefault(f"{kind}_p", []).append(probabilities)
            self.judged.setdefault(f"{kind}_f", []).append(features)
        self.judged.setdefault("labels", []).append(labels)

    def collected(self) -> dict[str, torch.Tensor]:
        values = {key: torch.cat(parts) for key, parts in self.judged.items()}
        self.judged = {}
        return values

    def on_validation_epoch_start(self):
        self.judged, self.stage_noise = {}, self.noise(self.val_samples, self.seed + 1)

    def validation_step(self, batch, batch_idx):
        self.judge_batch(batch, self.val_samples)

    def val_metric(self, key: str):
        return {"val/frechet": self.val_frechet, "val/score": self.val_score}[key]

    def on_validation_epoch_end(self):
        judged = self.collected()
        if self.trainer.sanity_checking or not judged:
            return
        self.val_frechet(frechet_distance(judged["fake_f"], judged["real_f"]))
        self.log("val/frechet", self.val_frechet, prog_bar=True)
        self.val_score(inception_score(judged["fake_p"]))
        self.log("val/score", self.val_score)
        self.log("val/class_entropy", class_entropy(judged["fake_p"]))
        self.add_frame()
        super().on_validation_epoch_end()

    def on_test_epoch_start(self):
        self.judged, self.stage_noise = {}, self.noise(self.test_samples, self.seed + 2)

    def test_step(self, batch, batch_idx):
        self.judge_batch(batch, self.test_samples)

    def on_test_epoch_end(self):
        judged = self.collected()
        train_x = self.trainer.datamodule.splits["train"][0][: len(judged["labels"])].to(self.device)
        _, train_f = self.judge(self.unit_pixels(train_x))
        values = {"score": inception_score(judged["fake_p"]), "score_real": inception_score(judged["real_p"]),
                  "class_entropy": class_entropy(judged["fake_p"]),
                  "frechet": frechet_distance(judged["fake_f"], judged["real_f"]),
                  "frechet_train_test": frechet_distance(train_f, judged["real_f"]),
                  "judge_acc": float((judged["real_p"].argmax(1) == judged["labels"]).double().mean()),
                  "samples": float(len(judged["labels"]))}
        values["score_ratio"] = values["score"] / values["score_real"]
        for key, value in values.items():
            self.log(f"test/{key}", value)

    # --- the samples of every epoch ---------------------------------------------------------------------------
    @torch.no_grad()
    def fixed_samples(self) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        images = self.model.generate(self.fixed_noise)
        self.model.train(was_training)
        return images

    def add_frame(self) -> None:
        """This epoch's grid of samples from the fixed noise: kept for the GIF and logged to MLflow at once."""
        from pipeline.mlflow_logger import MLFlowLogger
        from pipeline.viz.gan import image_grid, write_grid

        grid = image_grid(self.fixed_samples())
        self.frames.append(grid)
        epoch = len(self.frames)
        for logger in self.loggers:
            if isinstance(logger, MLFlowLogger):
                with tempfile.TemporaryDirectory() as folder:
                    path = write_grid(grid, Path(folder) / f"epoch_{epoch:03d}.png", caption=f"epoch {epoch}")
                    logger.experiment.log_files([path], "plots/samples")

    def get_extra_state(self) -> dict:
        return {"frames": torch.stack(self.frames) if self.frames else torch.zeros(0, dtype=torch.uint8)}

    def set_extra_state(self, state: dict) -> None:
        """The grids of the checkpoint's epochs; but loading an earlier checkpoint of this same run (the best
        epoch, for the test) keeps the later grids this module drew, which the GIF shows."""
        frames = list(state["frames"])
        drawn = self.frames
        if len(drawn) > len(frames) and all(torch.equal(a, b) for a, b in zip(frames, drawn)):
            return
        self.frames = frames

    # --- what the pipeline asks of the task ------------------------------------------------------------------
    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        image_data_only(cls.name, cfg)
        if cfg.get("scheduler"):
            raise ConfigError(f"scheduler {cfg.scheduler.get('_target_', '')}: task=gan steps its two optimizers "
                              "itself at a constant learning rate; use scheduler=none")
        if cfg.get("trainer", {}).get("gradient_clip_val"):
            raise ConfigError(f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val}: task=gan optimises "
                              "manually, where Lightning cannot clip gradients; set it to null")

    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        if not all(hasattr(model, part) for part in ("generator", "discriminator", "latent_dim", "generate")):
            raise ConfigError(f"model {model_name(cfg)} is not a GAN: task=gan trains a generator against a "
                              "discriminator (model=dcgan)")
        images = model.generate(torch.zeros(2, model.latent_dim))
        if tuple(images.shape[1:]) != tuple(inputs.shape[1:]) or tuple(model(inputs).shape) != (len(inputs), 1):
            raise ConfigError(f"model {model_name(cfg)} draws images of shape {list(images.shape[1:])} for "
                              f"data={cfg.data.name}, whose images are {list(inputs.shape[1:])} (task=gan)")

    @torch.no_grad()
    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """The fixed noise's samples now, the GIF of every epoch's, and the judge's class histogram of samples
        beside real test images."""
        from pipeline.viz.gan import image_grid, plot_class_histogram, write_gif, write_grid

        self.model.eval()
        paths = [write_grid(image_grid(self.fixed_samples()), folder / "samples.png",
                            caption=f"{len(self.fixed_noise)} samples from the fixed noise")]
        if self.frames:
            paths.append(write_gif(self.frames, folder / "samples.gif"))
        judge = self.find_judge(datamodule)
        real, _ = self.test_images(datamodule, 2000)
        device = next(self.model.parameters()).device
        sampled, _ = judge(self.model.generate(self.noise(len(real), self.seed + 2).to(device)))
        judged_real, _ = judge(real.to(device))
        paths.append(plot_class_histogram(sampled.argmax(1).cpu(), judged_real.argmax(1).cpu(),
                                          datamodule.class_names, folder / "classes.png", viz.dpi,
                                          title=f"classes the judge sees in {len(real)} samples and test images"))
        return paths

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        """The generator: latent vectors z ~ N(0, I) in, images in [0, 1] out."""
        return (self.model.generator, self.noise(8, self.seed),
                {"inputs": f"latent vectors z of size {self.model.latent_dim}, drawn from N(0, I)",
                 "outputs": f"images {list(datamodule.input_shape)} of pixel values in [0, 1]",
                 "judge": self.judge.source if self.judge is not None else None})
