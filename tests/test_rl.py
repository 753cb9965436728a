"""Deep RL as a user runs it: data=cartpole (a gymnasium environment as a data config), task=dqn and reinforce with
model=policy_mlp, tiny but real (Lightning, MLflow on SQLite, gymnasium, `dvc exp run`); the metrics, return
curve, episode GIF and policy read back; the DQN's target network and ε on their schedules; seeded evaluation."""
import json
import math
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image

from conftest import ROOT, all_runs, epochs_logged
from pipeline.checks import check_job
from pipeline.cli import one_line
from pipeline.errors import ConfigError
from pipeline.tasks.rl import greedy_returns
from pipeline.train import build_data, build_task, build_trainer, run, start
from test_dvc import make_repo, ran_stages, read_metrics, set_flags, sh

# Small enough for seconds: a 32-unit net, 300 steps per epoch, short evaluations.
TINY = ["data=cartpole", "model=policy_mlp", "model.hidden=[32]", "data.steps_per_epoch=300",
        "data.val_episodes=3", "data.test_episodes=6", "~callbacks.progress_bar", "threads=1"]
DQN = ["task=dqn", "task.warmup_steps=100", "task.epsilon_decay_steps=400", "task.epsilon_end=0.1",
       "task.buffer_size=1000"]
REINFORCE = ["task=reinforce", "task.episodes=4", "optimizer.lr=0.01"]


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


@pytest.mark.parametrize("task", [DQN, REINFORCE], ids=["dqn", "reinforce"])
def test_a_tiny_run_logs_returns_the_curve_a_gif_and_a_policy_that_loads(compose_config, tracking_uri, task):
    cfg = compose_config(*TINY, *task, "trainer.max_epochs=2")
    metrics = run(cfg, overrides=[])
    client, (tracked,) = all_runs(tracking_uri)
    assert tracked.info.status == "FINISHED"
    logged = tracked.data.metrics
    for key in ("train/episode_return", "val/return", "val/return_best", "test/return", "test/return_std",
                "test/solved_fraction"):
        assert math.isfinite(logged[key]), key
    assert len(client.get_metric_history(tracked.info.run_id, "val/return")) == 2  # one per epoch
    assert logged["train/env_steps"] == 600 and logged["train/episodes"] >= 1
    assert 8 <= logged["train/episode_return"] <= 500  # CartPole pays 1 per step; no episode is shorter than 8
    assert metrics["test/return"] == pytest.approx(logged["test/return"])

    files = artifacts(client, tracked.info.run_id)
    assert {"plots/return_curve.png", "plots/episode.gif", "evaluation/returns.csv", "data/description.json"} <= files
    gif = Image.open(mlflow.artifacts.download_artifacts(f"runs:/{tracked.info.run_id}/plots/episode.gif"))
    assert gif.format == "GIF" and gif.n_frames >= 4 and gif.size == (300, 200)
    returns = mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/evaluation/returns.csv").splitlines()
    assert returns[0] == "seed,return" and len(returns) == 7
    values = [float(line.split(",")[1]) for line in returns[1:]]
    assert sum(values) / len(values) == pytest.approx(logged["test/return"], rel=1e-5)  # the same seeded episodes

    description = json.loads(mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/data/description.json"))
    assert description["env_id"] == "CartPole-v1" and description["action_names"] == ["push left", "push right"]
    policy = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
    with torch.no_grad():
        assert policy(torch.zeros(5, 4)).shape == (5, 2)


def test_dqn_target_network_is_copied_every_n_steps_and_unchanged_between(compose_config):
    """Seen at the start of each step (after the previous one's update): equal to the model right after an
    update step, frozen in between while the model learns."""
    every = 7
    cfg = compose_config(*TINY[:-2], "threads=1", *DQN, "task.warmup_steps=20", "task.batch_size=16",
                         f"task.target_update_every={every}",
                         "data.steps_per_epoch=60", "trainer.max_epochs=1", "logger=none", "callbacks=none")
    start(cfg)
    datamodule = build_data(cfg)
    task = build_task(cfg, datamodule)
    seen = []

    class Recorder(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            target = torch.cat([p.flatten() for p in module.target.parameters()]).clone()
            online = torch.cat([p.flatten() for p in module.model.parameters()]).clone()
            seen.append((int(module.env_steps), target, online))

    trainer = build_trainer(cfg, None, callbacks=[Recorder()])
    trainer.fit(task, datamodule=datamodule)
    assert len(seen) == 60
    for (steps, target, online), (_, previous_target, _) in zip(seen[1:], seen):
        if steps % every == 0:
            assert torch.equal(target, online), steps
        else:
            assert torch.equal(target, previous_target), steps
    # the model did learn in between, so "equal" above is not trivially true
    assert not torch.equal(seen[-1][2], seen[0][2])
    assert sum(not torch.equal(target, online) for _, target, online in seen) > 25


def test_dqn_polyak_update_moves_the_target_by_tau(compose_config):
    task = instantiate(compose_config(*TINY, *DQN, "task.tau=0.25").task, model=torch.nn.Linear(4, 2),
                       optimizer=None)
    with torch.no_grad():
        task.target.weight.zero_()
        task.model.weight.fill_(1.0)
    task.update_target()
    assert torch.allclose(task.target.weight, torch.full((2, 4), 0.25))


@pytest.mark.parametrize("double_q", [False, True])
def test_dqn_td_target_bootstraps_from_the_target_network_unless_terminal(compose_config, double_q):
    """Q(s, a) is pulled towards r + γ Q_target(s', a*): a* the target's best action, or with double_q the
    model's; a terminal transition keeps r alone."""
    cfg = compose_config(*TINY, *DQN, "task.gamma=0.5", f"task.double_q={str(double_q).lower()}")
    task = instantiate(cfg.task, model=torch.nn.Linear(2, 2, bias=False), optimizer=None)
    with torch.no_grad():
        task.model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))  # Q(s) = (s0, 2 s1)
        task.target.weight.copy_(torch.tensor([[10.0, 0.0], [0.0, 1.0]]))  # Q_target(s) = (10 s0, s1)
    observations, following = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # next state (1, 1): the model prefers action 1 (2 > 1), the target action 0 (10 > 1)
    bootstrap = 1.0 if double_q else 10.0
    loss = task.td_loss(observations, torch.tensor([0, 0]), torch.tensor([1.0, 1.0]), following,
                        torch.tensor([0.0, 1.0]))
    wanted = torch.tensor([1.0 + 0.5 * bootstrap, 1.0])
    assert float(loss) == pytest.approx(float(torch.nn.functional.smooth_l1_loss(torch.ones(2), wanted)))


def test_epsilon_falls_linearly_then_stays(compose_config):
    cfg = compose_config(*TINY, *DQN, "task.epsilon_start=1.0", "task.epsilon_end=0.1",
                         "task.epsilon_decay_steps=400")
    task = instantiate(cfg.task, model=torch.nn.Linear(4, 2), optimizer=None)
    assert [task.epsilon(step) for step in (0, 100, 200, 400, 10_000)] == pytest.approx([1.0, 0.775, 0.55, 0.1, 0.1])


def test_epsilon_logged_per_epoch_is_the_mean_of_its_schedule(compose_config, tracking_uri):
    run(compose_config(*TINY, *DQN, "task.epsilon_decay_steps=400", "task.epsilon_end=0.1", "trainer.max_epochs=2",
                       "data.steps_per_epoch=200"), overrides=[])
    client, (tracked,) = all_runs(tracking_uri)
    history = [m.value for m in sorted(client.get_metric_history(tracked.info.run_id, "train/epsilon"),
                                       key=lambda m: m.step)]
    # steps 0..199 then 200..399 of 1 - 0.9 s / 400
    assert history == pytest.approx([1 - 0.9 * 99.5 / 400, 1 - 0.9 * 299.5 / 400], abs=1e-5)


def test_the_100_episode_greedy_evaluation_is_seeded(compose_config):
    cfg = compose_config(*TINY, *DQN, "data.test_episodes=100")
    start(cfg)
    datamodule = build_data(cfg)
    policy = build_task(cfg, datamodule).model
    seeds = datamodule.test_seeds()
    assert len(seeds) == 100 and not set(seeds.tolist()) & set(datamodule.val_seeds().tolist())
    first, again = greedy_returns(policy, datamodule.make, seeds), greedy_returns(policy, datamodule.make, seeds)
    assert first == again and len(set(first)) > 1  # the same episodes, and not all alike
    assert greedy_returns(policy, datamodule.make, seeds + 1) != first


@pytest.mark.parametrize("overrides,expected", [
    (["model=mlp", "task=dqn"], "model.num_classes=${data.num_classes} but data=cartpole declares no "
                                "data.num_classes"),
    (["data=digits", "model=mlp", "task=dqn"], "task=dqn learns by acting in an environment"),
    (["data=digits", "model=policy_mlp", "task=reinforce"], "data=digits declares no data.num_actions"),
    (["model=policy_mlp", "task=dqn", "task.gamma=1.5"], "task.gamma=1.5 is invalid for task=dqn"),
    (["model=policy_mlp", "task=dqn", "task.batch_size=128", "task.buffer_size=100"], "task.batch_size=128"),
    (["model=policy_mlp", "task=classify"], "data=cartpole declares no data.num_classes"),
    (["model=linear_autoencoder", "task=dqn"], "for task=dqn: use model=policy_mlp"),
])
def test_a_config_error_is_one_line(compose_config, overrides, expected):
    cfg = compose_config("data=cartpole", *overrides)
    with pytest.raises(ConfigError) as error:
        check_job(cfg)
    message = one_line(error.value)
    assert expected in message and "\n" not in message, message


def test_run_py_refuses_mlp_on_cartpole_in_one_line(run_py):
    result = run_py("data=cartpole", "task=dqn", "model=mlp")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "data=cartpole declares no data.num_classes" in line and "model=policy_mlp" in line


def test_kill_9_then_resume_auto_continues_the_episodes_and_steps(run_py, tmp_path, tracking_uri):
    args = [*TINY, *DQN, "trainer.max_epochs=4"]
    all_runs(tracking_uri)
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path}/first"],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    # train/env_steps comes last in an epoch, after validation
    while epochs_logged(tmp_path / "mlflow.db", "train/env_steps") < 2:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    resumed = run_py(*args, "resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, (tracked,) = all_runs(tracking_uri)  # the same run, continued
    assert tracked.info.status == "FINISHED"
    steps = sorted((m.step, m.value) for m in client.get_metric_history(tracked.info.run_id, "train/env_steps"))
    assert steps[-1][1] == 4 * 300  # the step count (and ε with it) went on from the checkpoint
    assert {value for _, value in steps} == {300, 600, 900, 1200}


def test_dvc_exp_run_of_dqn_writes_its_returns_and_plots(tmp_path):
    overrides = ["data=cartpole", "task=dqn", "model=policy_mlp", "model.hidden=[32]", "data.steps_per_epoch=300",
                 "data.val_episodes=3", "data.test_episodes=10", "task.warmup_steps=100", "trainer.max_epochs=2"]
    repo = make_repo(tmp_path / "project")
    result = sh(repo, "dvc", "exp", "run", "-n", "dqn", *set_flags(overrides), timeout=600)
    assert ran_stages(result.stdout) == ["prepare", "train", "evaluate", "visualize"]
    metrics = read_metrics(repo)
    assert set(metrics) == {"return", "return_std", "solved_fraction"} and 8 <= metrics["return"] <= 500
    assert {path.name for path in (repo / "results/visualize").iterdir()} == {
        "learning_curves.png", "return_curve.png", "episode.gif"}
    returns = (repo / "results/evaluate/details/returns.csv").read_text().splitlines()
    assert len(returns) == 11
    history = (repo / "results/train/history.csv").read_text().splitlines()
    assert len(history) == 3 and "val/return" in history[0]
    _, (tracked,) = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert tracked.data.metrics["test/return"] == pytest.approx(metrics["return"], abs=1e-4)
