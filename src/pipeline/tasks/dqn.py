"""Deep Q-learning (Mnih et al. 2015): the model scores each action by its expected discounted return (Q), acts
ε-greedily on those scores, stores what happened in a replay buffer, and regresses Q(s, a) on r + γ max Q_target(s')
over random minibatches of it, with the Huber loss; the target network is a lagging copy of the model."""
import copy

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from pipeline.data.placement import to_device
from pipeline.tasks.rl import ReinforcementTask, at_least, check_values


class ReplayBuffer:
    """The last `capacity` transitions (observation, action, reward, next observation, terminated), in
    preallocated tensors; sampling draws from torch's global generator (in checkpoints, see resume.RandomState).
    Not itself checkpointed: a resumed run refills it during warm-up."""

    def __init__(self, capacity: int, observation_shape):
        self.capacity, self.size, self.next = capacity, 0, 0
        self.observations = torch.zeros(capacity, *observation_shape)
        self.following = torch.zeros(capacity, *observation_shape)
        self.actions = torch.zeros(capacity, dtype=torch.long)
        self.rewards = torch.zeros(capacity)
        self.terminated = torch.zeros(capacity)

    def __len__(self) -> int:
        return self.size

    def add(self, observation, action: int, reward: float, following, terminated: bool) -> None:
        i = self.next
        self.observations[i] = torch.as_tensor(observation)
        self.following[i] = torch.as_tensor(following)
        self.actions[i], self.rewards[i], self.terminated[i] = action, reward, float(terminated)
        self.next, self.size = (i + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, count: int, device) -> tuple[torch.Tensor, ...]:
        index = torch.randint(self.size, (count,))
        return tuple(to_device(values[index], device) for values in
                     (self.observations, self.actions, self.rewards, self.following, self.terminated))


class DeepQLearning(ReinforcementTask):
    """One training step = one environment step, then (after `warmup_steps`, every `train_every` steps) one
    gradient step on a replayed minibatch; every `target_update_every` environment steps the target network moves
    towards the model: a copy (tau 1) or Polyak averaging (tau < 1). ε falls linearly from `epsilon_start` to
    `epsilon_end` over `epsilon_decay_steps`. An episode cut by the time limit is not terminal: its last value is
    bootstrapped. Logged: train/loss (Huber TD error), train/epsilon, plus the RL metrics of ReinforcementTask."""

    name = "dqn"

    def __init__(self, model: nn.Module, optimizer, scheduler=None, gamma: float = 0.99, buffer_size: int = 100_000,
                 batch_size: int = 64, warmup_steps: int = 1000, train_every: int = 2,
                 target_update_every: int = 256, tau: float = 1.0, epsilon_start: float = 1.0,
                 epsilon_end: float = 0.04, epsilon_decay_steps: int = 16_000, double_q: bool = True,
                 monitor: str = "val/return", mode: str = "max", log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        self.gamma, self.batch_size, self.warmup_steps = gamma, batch_size, warmup_steps
        self.train_every, self.target_update_every, self.tau = train_every, target_update_every, tau
        self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps = epsilon_start, epsilon_end, epsilon_decay_steps
        self.double_q = double_q
        self.buffer_size = buffer_size
        self.buffer: ReplayBuffer | None = None
        self.target = copy.deepcopy(model).requires_grad_(False)

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        super().check_data(cfg)
        check_values(cfg, cls.name, [
            ("task.gamma", lambda v: 0 < v <= 1, "a number in (0, 1]"),
            ("task.tau", lambda v: 0 < v <= 1, "a number in (0, 1] (1: copy the model)"),
            ("task.epsilon_start", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
            ("task.epsilon_end", lambda v: 0 <= v <= cfg.task.epsilon_start, "a number in [0, task.epsilon_start]"),
            *[(f"task.{key}", at_least(low), f"an integer >= {low}")
              for key, low in (("buffer_size", 1), ("batch_size", 1), ("warmup_steps", 0), ("train_every", 1),
                               ("target_update_every", 1), ("epsilon_decay_steps", 1))],
            ("task.batch_size", lambda v: v <= cfg.task.buffer_size, "at most task.buffer_size (a minibatch is "
                                                                     "drawn from the buffer)")])

    def epsilon(self, step: int | None = None) -> float:
        """The exploration rate after `step` environment steps (default: the steps taken so far)."""
        step = int(self.env_steps) if step is None else step
        progress = min(step / self.epsilon_decay_steps, 1.0)
        return self.epsilon_start + (self.epsilon_end - self.epsilon_start) * progress

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit" and self.buffer is None:
            self.buffer = ReplayBuffer(self.buffer_size, self.environment.input_shape)

    @torch.no_grad()
    def choose_action(self, observation: np.ndarray) -> int:
        if float(torch.rand(())) < self.epsilon():
            return int(torch.randint(self.environment.num_actions, ()))
        was_training = self.model.training
        self.model.eval()  # one observation: BatchNorm (if any) uses its running statistics
        scores = self.model(torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None])
        self.model.train(was_training)
        return int(scores.argmax(1))

    def training_loss(self, batch, batch_idx):
        self.add_to_epoch_mean("train/epsilon", self.epsilon())
        action = self.choose_action(self.current_observation())
        observation, following, reward, terminated, _ = self.act(action)
        self.buffer.add(observation, action, reward, following, terminated)
        if len(self.buffer) < max(self.warmup_steps, self.batch_size) or int(self.env_steps) % self.train_every:
            return None  # no gradient step this time
        loss = self.td_loss(*self.buffer.sample(self.batch_size, self.device))
        self.log_loss("train", loss, self.batch_size)
        return loss

    def td_loss(self, observations, actions, rewards, following, terminated) -> torch.Tensor:
        """Huber loss between Q(s, a) and r + γ (1 - terminated) Q_target(s', a*), a* the target's best action
        (double_q: the model's best action, scored by the target)."""
        q = self.model(observations).gather(1, actions[:, None]).squeeze(1)
        with torch.no_grad():
            next_scores = self.target(following)
            if self.double_q:
                best = self.model(following).argmax(1, keepdim=True)
                next_value = next_scores.gather(1, best).squeeze(1)
            else:
                next_value = next_scores.max(1).values
            wanted = rewards + self.gamma * (1.0 - terminated) * next_value
        return F.smooth_l1_loss(q, wanted)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if int(self.env_steps) % self.target_update_every == 0:
            self.update_target()

    @torch.no_grad()
    def update_target(self) -> None:
        for target, online in zip(self.target.state_dict().values(), self.model.state_dict().values()):
            if self.tau < 1 and target.is_floating_point():
                target.lerp_(online, self.tau)
            else:
                target.copy_(online)
