"""What the RL tasks (dqn.py, reinforce.py) share: acting in the datamodule's environment, the returns of the
training episodes, greedy seeded evaluation (validation picks the best epoch by it, the test is gymnasium's
100-episode protocol), the return curve and a GIF of one greedy episode, and the policy network as logged model."""
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric

from pipeline.checks import model_name
from pipeline.errors import ConfigError
from pipeline.tasks.base import Task

# The RL tasks skip the optimizer on purpose (warm-up, an unfinished batch of episodes) by returning None.
warnings.filterwarnings("ignore", message=r"`training_step` returned `None`")


@torch.no_grad()
def greedy_returns(policy: nn.Module, make_env, seeds) -> list[float]:
    """The return of one episode per seed, each action the policy's highest-scoring one. The episodes run side
    by side, so each step is one batched forward pass."""
    device = next(policy.parameters()).device
    envs = [make_env() for _ in seeds]
    observations = [env.reset(seed=int(seed))[0] for env, seed in zip(envs, seeds)]
    returns = [0.0] * len(envs)
    playing = list(range(len(envs)))
    while playing:
        scores = policy(torch.as_tensor(np.stack([observations[i] for i in playing]), dtype=torch.float32,
                                        device=device))
        still = []
        for i, action in zip(playing, scores.argmax(1).tolist()):
            observations[i], reward, terminated, truncated, _ = envs[i].step(action)
            returns[i] += float(reward)
            if not (terminated or truncated):
                still.append(i)
        playing = still
    for env in envs:
        env.close()
    return returns


def check_values(cfg: DictConfig, task: str, rules) -> None:
    """Refuse, in one line, the first value that is not a number `accepts` (rules: key, accepts, allowed)."""
    for key, accepts, allowed in rules:
        value = OmegaConf.select(cfg, key)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and accepts(value)):
            raise ConfigError(f"{key}={value!r} is invalid for task={task}: must be {allowed}")


def at_least(low: int):
    return lambda value: isinstance(value, int) and value >= low


class ReinforcementTask(Task):
    """A task that learns a policy by acting in an environment (data=cartpole, acrobot). Subclasses implement
    training_step, which calls `act` once per environment step. Logged per epoch: train/episode_return (the mean
    of the episodes finished in the epoch), train/episodes, val/return (greedy, the datamodule's val seeds);
    at the end test/return, test/return_std and test/solved_fraction over the test seeds."""

    best_of = {"val/return": "max"}

    def __init__(self, model: nn.Module, optimizer, scheduler=None, monitor: str = "val/return",
                 mode: str = "max", log_every_step: bool = False):
        super().__init__(model, optimizer, scheduler, monitor, mode, log_every_step)
        self.val_return = MeanMetric()
        self.observation = None  # of the training episode under way (None: reset before the next step)
        self.running_return = 0.0
        # Every finished training episode's return and epoch: the return curve (kept in checkpoints, see below).
        self.episode_returns: list[float] = []
        self.episode_epochs: list[int] = []
        self.val_returns: list[tuple[int, float]] = []  # (training episodes so far, greedy validation return)
        self.register_buffer("env_steps", torch.zeros((), dtype=torch.long))  # in checkpoints: resume goes on

    # --- what the pipeline asks of the task ---------------------------------------------------------------
    @classmethod
    def check_data(cls, cfg: DictConfig) -> None:
        if "num_actions" not in cfg.data:
            raise ConfigError(f"task={cls.name} learns by acting in an environment (data.num_actions): data="
                              f"{cfg.data.name} is a data set; choose data=cartpole or acrobot")
        check_values(cfg, cls.name, [(key, at_least(1), "an integer >= 1") for key in (
            "data.num_actions", "data.steps_per_epoch", "data.val_episodes", "data.test_episodes")])

    @classmethod
    def check_model(cls, model: nn.Module, inputs: torch.Tensor, cfg: DictConfig) -> None:
        out = model(inputs)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(inputs), cfg.data.num_actions):
            shape = list(out.shape)[1:] if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"model {model_name(cfg)} outputs {shape} for data={cfg.data.name}, which needs one "
                              f"score per action ({cfg.data.num_actions}) for task={cls.name}: use model=policy_mlp")

    def val_metric(self, key: str):
        return self.val_return

    def exported(self, datamodule) -> tuple[nn.Module, torch.Tensor, dict]:
        return (self.model, datamodule.example_inputs(8),
                {"inputs": f"observations of {datamodule.env_id}: " + ", ".join(datamodule.observation_names),
                 "outputs": "one score per action (" + ", ".join(datamodule.action_names) + "); the greedy "
                            "action is the highest"})

    # --- acting in the training environment ---------------------------------------------------------------
    def setup(self, stage: str) -> None:
        self.environment = self.trainer.datamodule

    def act(self, action: int) -> tuple[np.ndarray, np.ndarray, float, bool, bool]:
        """One step of the training environment: (observation, next observation, reward, terminated, the
        episode ended). A new episode starts on the next call after one ends."""
        observation = self.current_observation()
        following, reward, terminated, truncated, _ = self.environment.env.step(action)
        self.env_steps += 1
        self.running_return += float(reward)
        ended = terminated or truncated
        if ended:
            self.episode_returns.append(self.running_return)
            self.episode_epochs.append(self.current_epoch)
            self.observation, self.running_return = None, 0.0
        else:
            self.observation = following
        return observation, following, float(reward), terminated, ended

    def current_observation(self) -> np.ndarray:
        if self.observation is None:
            self.observation, _ = self.environment.env.reset()
            self.running_return = 0.0
        return self.observation

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        finished = [value for value, epoch in zip(self.episode_returns, self.episode_epochs)
                    if epoch == self.current_epoch]
        self.log("train/episodes", float(len(finished)))
        self.log("train/env_steps", float(self.env_steps))  # so far: the x axis RL papers plot returns against
        if finished:
            self.log("train/episode_return", float(np.mean(finished)), prog_bar=True)

    # --- evaluation ---------------------------------------------------------------------------------------
    def validation_step(self, seeds, batch_idx):
        returns = greedy_returns(self.model, self.trainer.datamodule.make, seeds)
        self.log_epoch_metric("val/return", self.val_return, torch.tensor(returns), prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_returns.append((len(self.episode_returns), float(self.val_return.compute())))
        super().on_validation_epoch_end()

    def test_step(self, seeds, batch_idx):
        returns = torch.tensor(greedy_returns(self.model, self.trainer.datamodule.make, seeds))
        threshold = self.trainer.datamodule.reward_threshold
        values = {"test/return": returns.mean(), "test/return_std": returns.std(correction=0)}
        if threshold is not None:
            values["test/solved_fraction"] = (returns >= threshold).float().mean()
        self.log_dict(values, batch_size=len(returns))

    def evaluation(self, datamodule, folder: Path) -> tuple[dict, list[Path]]:
        """Every test episode's seed and return (returns.csv): the spread behind test/return."""
        seeds = datamodule.test_seeds().tolist()
        self.model.eval()
        returns = greedy_returns(self.model, datamodule.make, seeds)
        path = folder / "returns.csv"
        path.write_text("seed,return\n" + "".join(f"{seed},{value:g}\n" for seed, value in zip(seeds, returns)))
        return {}, [path]

    def plots(self, datamodule, viz: DictConfig, folder: Path) -> list[Path]:
        """The training episodes' returns with each epoch's mean and the greedy validation return, and one greedy
        test episode as a GIF."""
        from pipeline.viz.episodes import plot_return_curve, render_episode

        self.model.eval()
        seed = int(datamodule.test_seeds()[0])
        return [plot_return_curve(self.episode_returns, self.episode_epochs, self.val_returns,
                                  folder / "return_curve.png", viz.dpi, threshold=datamodule.reward_threshold,
                                  title=f"{self.name} on {datamodule.env_id}"),
                render_episode(self.model, datamodule.make, seed, folder / "episode.gif")]

    # --- the return curve goes into the state_dict, so checkpoints (and the DVC stages) keep it --------------
    def get_extra_state(self) -> dict:
        return {"episode_returns": torch.tensor(self.episode_returns, dtype=torch.float64),
                "episode_epochs": torch.tensor(self.episode_epochs, dtype=torch.long),
                "val_returns": torch.tensor(self.val_returns, dtype=torch.float64).reshape(-1, 2)}

    def set_extra_state(self, state: dict) -> None:
        """A checkpoint of an earlier epoch (the best one, which the test loads) never shortens the curve that
        this process has seen: it only fills an empty one (a resumed run, a later DVC stage)."""
        if len(state["episode_returns"]) >= len(self.episode_returns):
            self.episode_returns = state["episode_returns"].tolist()
            self.episode_epochs = state["episode_epochs"].tolist()
            greedy = state.get("val_returns", torch.zeros(0, 2)).tolist()
            self.val_returns = [(int(episodes), value) for episodes, value in greedy]
