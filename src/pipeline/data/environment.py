"""An environment as data: a gymnasium environment that the RL tasks (task=dqn, reinforce) act in. Training has no
fixed dataset: the train loader only counts the environment steps of an epoch, and the task steps `env` itself;
the validation and test loaders each give one batch, the seeds of the episodes a greedy evaluation plays."""
import gymnasium as gym
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pipeline.errors import ConfigError

# Seeds of the evaluation episodes, apart from the training episodes' (which start at `seed`) and from each other.
VAL_SEEDS, TEST_SEEDS = 100_000, 200_000


class EnvironmentDataModule(pl.LightningDataModule):
    """gymnasium's `env_id` (any environment with a flat observation vector and discrete actions)."""

    def __init__(self, name: str, env_id: str, input_shape, num_actions: int, action_names, observation_names,
                 steps_per_epoch: int, val_episodes: int, test_episodes: int, seed: int,
                 max_episode_steps: int | None = None):
        super().__init__()
        self.name = name
        self.env_id = env_id
        self.input_shape = tuple(input_shape)
        self.num_actions = num_actions
        self.action_names = list(action_names)
        self.observation_names = list(observation_names)
        self.steps_per_epoch = steps_per_epoch
        self.val_episodes = val_episodes
        self.test_episodes = test_episodes
        self.seed = seed
        self.max_episode_steps = max_episode_steps
        self.env: gym.Env | None = None  # the training environment, made by setup()

    def make(self, render_mode: str | None = None) -> gym.Env:
        """A new instance of the environment (render_mode="rgb_array" draws frames)."""
        try:
            return gym.make(self.env_id, render_mode=render_mode, max_episode_steps=self.max_episode_steps)
        except gym.error.Error as error:
            raise ConfigError(f"data.env_id={self.env_id} is not a gymnasium environment here: {error}") from None

    def prepare_data(self) -> None:
        """Nothing to download: classic-control environments are simulated."""

    def setup(self, stage: str | None = None) -> None:
        if self.env is not None:
            return
        env = self.make()
        shape, space = env.observation_space.shape, env.action_space
        if tuple(shape or ()) != self.input_shape:
            raise ConfigError(f"data.input_shape={list(self.input_shape)} does not match data={self.name}, whose "
                              f"observations have shape {list(shape or ())}")
        if not isinstance(space, gym.spaces.Discrete) or space.n != self.num_actions:
            raise ConfigError(f"data.num_actions={self.num_actions} does not match data={self.name}, whose actions "
                              f"are {space}: the RL tasks take a fixed number of discrete actions")
        if len(self.action_names) != self.num_actions:
            raise ConfigError(f"data.action_names has {len(self.action_names)} names for data={self.name}'s "
                              f"{self.num_actions} actions")
        env.reset(seed=self.seed)  # seeds the environment's generator: every later episode follows from it
        self.env = env

    @property
    def reward_threshold(self) -> float | None:
        """The mean return at which gymnasium calls the environment solved (CartPole-v1: 475)."""
        return gym.spec(self.env_id).reward_threshold

    # --- what train.py and the DVC stages ask of a datamodule -----------------------------------------------
    def example_inputs(self, count: int = 2) -> torch.Tensor:
        """Real observations (a seeded episode's first steps, random actions): what a model is tried on."""
        env = self.make()
        observation, _ = env.reset(seed=self.seed)
        env.action_space.seed(self.seed)
        seen = [observation]
        while len(seen) < count:
            observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
            seen.append(env.reset()[0] if terminated or truncated else observation)
        env.close()
        return torch.as_tensor(np.stack(seen), dtype=torch.float32)

    def sizes(self) -> dict[str, int]:
        return {"train steps per epoch": self.steps_per_epoch, "val episodes": self.val_episodes,
                "test episodes": self.test_episodes}

    def prepared(self) -> dict:
        """No data to save: the environment's spec, which restore() checks the installed gymnasium still has."""
        env = self.make()
        env.close()
        return {"env_id": self.env_id, "spec": env.spec.to_json(), "gymnasium": gym.__version__}

    def restore(self, prepared: dict) -> None:
        if prepared.get("env_id") != self.env_id:
            raise ConfigError(f"data.env_id={self.env_id} but the prepared data is {prepared.get('env_id')}: "
                              "run `dvc repro` (its prepare stage writes it again)")
        self.setup()

    def describe(self) -> dict:
        return {"data": self.name, "env_id": self.env_id, "input_shape": list(self.input_shape),
                "observation_names": self.observation_names, "action_names": self.action_names}

    def state_dict(self) -> dict:
        """The training environment's random generator, kept in checkpoints: a resumed run's episodes continue
        from it (an episode cut by the stop starts again)."""
        return {"env_rng": self.env.unwrapped.np_random.bit_generator.state} if self.env is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "env_rng" in state_dict:
            self.setup()
            self.env.unwrapped.np_random.bit_generator.state = state_dict["env_rng"]

    # --- loaders --------------------------------------------------------------------------------------------
    def train_dataloader(self):
        return range(self.steps_per_epoch)

    def val_dataloader(self):
        return one_batch(self.val_seeds())

    def test_dataloader(self):
        return one_batch(self.test_seeds())

    def val_seeds(self) -> torch.Tensor:
        return torch.arange(self.val_episodes) + self.seed + VAL_SEEDS

    def test_seeds(self) -> torch.Tensor:
        return torch.arange(self.test_episodes) + self.seed + TEST_SEEDS


def one_batch(seeds: torch.Tensor) -> DataLoader:
    """A loader whose only batch is `seeds` (a plain list would be taken for several loaders)."""
    return DataLoader([seeds], batch_size=None)
