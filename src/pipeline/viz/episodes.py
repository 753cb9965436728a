"""Pictures of an RL run: the return of every training episode, and one greedy episode as an animated GIF."""
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.viz import pyplot, save

# gymnasium draws classic-control frames with pygame, which needs a display unless SDL is told there is none.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")


def plot_return_curve(returns: list[float], epochs: list[int], greedy: list[tuple[int, float]], path: Path,
                      dpi: int = 110, threshold: float | None = None, title: str = "") -> Path:
    """Each training episode's return (dots, by episode), each epoch's mean (line, at its last episode) and the
    greedy validation return after each epoch (`greedy`: training episodes so far, return): training explores,
    so its returns lag the greedy policy's."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    episodes = np.arange(1, len(returns) + 1)
    axis.scatter(episodes, returns, s=4, alpha=0.35, label="episode")
    ends, means = [], []
    for epoch in sorted(set(epochs)):
        chosen = [i for i, e in enumerate(epochs) if e == epoch]
        ends.append(chosen[-1] + 1)
        means.append(float(np.mean([returns[i] for i in chosen])))
    if means:
        axis.plot(ends, means, marker="o", markersize=3, color="C1", label="epoch mean")
    if greedy:
        axis.plot(*zip(*greedy), marker="s", markersize=3, color="C3", label="greedy (validation)")
    if threshold is not None:
        axis.axhline(threshold, color="C2", linestyle="--", linewidth=1, label=f"solved ({threshold:g})")
    axis.set(xlabel="training episode", ylabel="return", title=title or "training returns")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save(figure, path, dpi)


@torch.no_grad()
def render_episode(policy: torch.nn.Module, make_env, seed: int, path: Path, every: int = 2, scale: float = 0.5,
                   fps: int = 25) -> Path:
    """One greedy episode (seeded), every `every`-th frame at `scale`, as a looping GIF."""
    from PIL import Image

    device = next(policy.parameters()).device
    env = make_env(render_mode="rgb_array")
    observation, _ = env.reset(seed=seed)
    frames, total, step, ended = [], 0.0, 0, False
    while not ended:
        if step % every == 0:
            frames.append(env.render())
        action = int(policy(torch.as_tensor(observation, dtype=torch.float32, device=device)[None]).argmax(1))
        observation, reward, terminated, truncated, _ = env.step(action)
        total, step, ended = total + float(reward), step + 1, terminated or truncated
    frames.append(env.render())
    env.close()
    images = [Image.fromarray(frame) for frame in frames]
    size = (int(images[0].width * scale), int(images[0].height * scale))
    images = [image.resize(size) for image in images]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 * every / fps), loop=0,
                   comment=f"greedy episode, seed {seed}: {step} steps, return {total:g}".encode())
    return path
