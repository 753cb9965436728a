"""Lookahead with a moving average (airbench's): every `every` steps the weights (and BatchNorm's running
statistics) move to a moving average of themselves, which then carries on from there. SGD keeps exploring between
syncs; the average pulls it back towards where the last syncs agreed. The average's decay grows from 0 to `decay`
as the cube of the training's progress: early on the weights run free, late they are smoothed the most; the last
step leaves the average in place (the weights validated, tested and logged).

Not torch_optimizer's Lookahead: that one has a constant step back (no schedule) and leaves BatchNorm's statistics
behind, which then describe weights the network no longer has."""
import math

import pytorch_lightning as pl
import torch


class Lookahead(pl.Callback):
    def __init__(self, every: int = 5, decay: float = 0.95**5, power: float = 3.0):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"callbacks.lookahead.every={every!r} is invalid: a number of steps, 1 or more")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.lookahead.decay={decay!r} is invalid: must be in [0, 1)")
        self.every, self.decay, self.power = every, decay, power
        self.average: dict[str, torch.Tensor] | None = None
        self.synced_at = -1

    def decay_at(self, step: int, total: float) -> float:
        """The average's decay after `step` of `total` steps (an endless fit: the full decay throughout)."""
        progress = min(1.0, step / total) if math.isfinite(total) and total > 0 else 1.0
        return self.decay * progress**self.power

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.estimated_stepping_batches
        last = math.isfinite(total) and step >= total
        if (step % self.every and not last) or step == self.synced_at:  # accumulating: one step over many batches
            return
        self.synced_at = step
        current = {name: value for name, value in pl_module.state_dict().items() if value.is_floating_point()}
        if self.average is None:
            self.average = {name: value.clone() for name, value in current.items()}
        weight = 1.0 - self.decay_at(step, total) if step % self.every == 0 else 0.0
        for name, value in current.items():
            average = self.average[name] = self.average[name].to(value.device)  # a checkpoint loads onto the CPU
            average.lerp_(value, weight)
            value.copy_(average)  # state_dict's tensors share the module's storage

    def state_dict(self) -> dict:
        return {"average": self.average}

    def load_state_dict(self, state_dict: dict) -> None:
        self.average = state_dict["average"]
