"""REINFORCE (Williams 1992), the policy-gradient method: the model's scores are the logits of a stochastic policy;
after each batch of whole episodes, raise the log-probability of every action taken in proportion to how much
better than usual the return that followed it was (the baseline: returns are standardised over the batch)."""
import torch
from omegaconf import DictConfig
from torch import nn

from pipeline.tasks.rl import ReinforcementTask, at_least, check_values


def returns_to_go(rewards: list[float], gamma: float) -> list[float]:
    """G_t = r_t + γ G_{t+1}: the discounted return from each step of one episode to its end."""
    following, returns = 0.0, []
    for reward in reversed(rewards):
        following = reward + gamma * following
        returns.append(following)
    return returns[::-1]


class Reinforce(ReinforcementTask):
    """One training step = one environment step with an action sampled from the policy; when `episodes` episodes
    have ended, one gradient step on -mean(log π(a|s) · A) - entropy_weight · H(π), A being the standardised
    return-to-go. Logged: train/loss, train/entropy, plus the RL metrics of ReinforcementTask."""

    name = "reinforce"

    def __init__(self, model: nn.Module, optimizer, scheduler=None, gamma: float = 0.99, episodes: int = 8,
                 entropy_weight: float = 0.0, monitor: str = "val/return", mode: str = "max",
                 log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        self.gamma, self.episodes, self.entropy_weight = gamma, episodes, entropy_weight
        self.batch = self.empty_batch()

    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        super().check_data(cfg)
        check_values(cfg, cls.name, [("task.gamma", lambda v: 0 < v <= 1, "a number in (0, 1]"),
                                     ("task.episodes", at_least(1), "an integer >= 1"),
                                     ("task.entropy_weight", lambda v: v >= 0, "a number >= 0")])

    @staticmethod
    def empty_batch() -> dict:
        """The episodes played since the last update: observations, actions, and rewards per episode."""
        return {"observations": [], "actions": [], "rewards": [[]]}

    @torch.no_grad()
    def sample_action(self, observation) -> int:
        was_training = self.model.training
        self.model.eval()  # one observation: BatchNorm (if any) uses its running statistics
        logits = self.model(torch.as_tensor(observation, dtype=torch.float32, device=self.device)[None])
        self.model.train(was_training)
        return int(torch.distributions.Categorical(logits=logits).sample())

    def training_loss(self, batch, batch_idx):
        observation = self.current_observation()
        action = self.sample_action(observation)
        _, _, reward, _, ended = self.act(action)
        self.batch["observations"].append(torch.as_tensor(observation, dtype=torch.float32))
        self.batch["actions"].append(action)
        self.batch["rewards"][-1].append(reward)
        if not ended:
            return None
        if len(self.batch["rewards"]) < self.episodes:
            self.batch["rewards"].append([])
            return None
        played, self.batch = self.batch, self.empty_batch()
        return self.policy_loss(torch.stack(played["observations"]).to(self.device),
                                torch.tensor(played["actions"], device=self.device),
                                torch.tensor([g for rewards in played["rewards"]
                                              for g in returns_to_go(rewards, self.gamma)], device=self.device))

    def policy_loss(self, observations, actions, returns) -> torch.Tensor:
        policy = torch.distributions.Categorical(logits=self.model(observations))
        advantage = (returns - returns.mean()) / (returns.std(correction=0) + 1e-8)
        entropy = policy.entropy().mean()
        loss = -(policy.log_prob(actions) * advantage).mean() - self.entropy_weight * entropy
        self.log_loss("train", loss, len(actions))
        self.add_to_epoch_mean("train/entropy", entropy.item(), len(actions))
        return loss
