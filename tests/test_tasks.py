"""task is a config group: reconstruct, vae and embed end to end on tiny data (real Lightning, Hydra and MLflow on
SQLite), each one's metrics, plots, evaluation files and logged model as a user reads them back; and every
conf/task × model × data combination either runs one batch or is refused with one line naming the keys."""
import inspect
import itertools
import json
import math

import mlflow
import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate

from conftest import CONF, all_runs
from pipeline.checks import check_job
from pipeline.cli import one_line
from pipeline.errors import ConfigError
from pipeline.train import run
from test_text import PAIRS, planted_text


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


TASKS, MODELS, DATA = options("task"), options("model"), options("data")
QUIET = ["~callbacks.progress_bar", "threads=1"]


def artifacts(client, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def only_run(tracking_uri: str):
    client, runs = all_runs(tracking_uri)
    (tracked,) = runs
    assert tracked.info.status == "FINISHED"
    return client, tracked


@pytest.mark.parametrize("model", ["conv_autoencoder", "linear_autoencoder"])
def test_reconstruct_logs_error_psnr_pca_baseline_plots_and_a_model_that_rebuilds_images(compose_config,
                                                                                        tracking_uri, model):
    cfg = compose_config("task=reconstruct", f"model={model}", "model.code_size=8", "trainer.max_epochs=4",
                         "optimizer.lr=0.005", *QUIET)
    metrics = run(cfg, overrides=[])
    client, tracked = only_run(tracking_uri)
    logged = tracked.data.metrics
    assert logged["test/mse"] == pytest.approx(metrics["test/mse"]) and logged["test/loss"] == logged["test/mse"]
    assert logged["test/psnr"] == pytest.approx(10 * math.log10(1 / logged["test/mse"]), rel=1e-4)
    assert 0.001 < logged["test/pca_mse"] < 0.06  # PCA with 8 of 64 components on digits
    assert logged["test/mse_over_pca"] == pytest.approx(logged["test/mse"] / logged["test/pca_mse"], rel=1e-4)
    assert logged["test/mse"] < 0.06  # the mean image alone leaves ~0.1: it learned to reconstruct
    assert {"plots/reconstructions.png", "plots/codes.png", "data/description.json"} <= artifacts(
        client, tracked.info.run_id)
    description = json.loads(mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/data/description.json"))
    assert description["task"] == "reconstruct" and "[0, 1]" in description["inputs"]

    loaded = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    x = datamodule.unit_pixels(datamodule.splits["test"][0])
    with torch.no_grad():
        rebuilt = loaded(x)
    assert rebuilt.shape == x.shape
    assert float(((rebuilt - x) ** 2).mean()) == pytest.approx(logged["test/mse"], rel=1e-3)


def test_reconstruct_with_bce_reports_mse_of_the_sigmoid_output(compose_config, tracking_uri):
    metrics = run(compose_config("task=reconstruct", "task.loss=bce", "model=conv_autoencoder",
                                 "trainer.max_epochs=2", *QUIET), overrides=[])
    assert metrics["test/loss"] > 0.2  # BCE of pixels in [0, 1]: far above their squared error
    assert 0 < metrics["test/mse"] < 0.1 and metrics["test/mse"] < metrics["test/loss"]


def test_vae_logs_the_elbo_terms_its_plots_and_a_decoder_that_draws_images(compose_config, tracking_uri):
    cfg = compose_config("task=vae", "model=vae", "model.hidden=[64]", "model.latent_dim=2", "trainer.max_epochs=3",
                         "optimizer.lr=0.003", *QUIET)
    metrics = run(cfg, overrides=[])
    client, tracked = only_run(tracking_uri)
    # The negative ELBO in nats per image is its two terms; 64 pixels at ln 2 each is what a blind guess costs.
    assert metrics["test/loss"] == pytest.approx(metrics["test/reconstruction"] + metrics["test/kl"], rel=1e-4)
    assert 0 < metrics["test/kl"] and metrics["test/loss"] < 64 * math.log(2)
    assert metrics["val/loss_best"] <= tracked.data.metrics["val/loss"] + 1e-6
    assert {"plots/samples.png", "plots/reconstructions.png", "plots/latent.png", "plots/manifold.png"} <= artifacts(
        client, tracked.info.run_id)
    generator = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
    images = generator(torch.randn(5, 2))
    assert images.shape == (5, 1, 8, 8) and 0 <= images.min() and images.max() <= 1


def test_vae_without_a_2d_latent_draws_no_manifold(compose_config, tracking_uri):
    run(compose_config("task=vae", "model=conv_vae", "model.channels=[4]", "trainer.max_epochs=1", *QUIET),
        overrides=[])
    client, tracked = only_run(tracking_uri)
    plots = {path for path in artifacts(client, tracked.info.run_id) if path.startswith("plots/")}
    assert plots == {"plots/samples.png", "plots/reconstructions.png", "plots/latent.png"}


def test_embed_finds_planted_partners_and_logs_vectors_gensim_reads(compose_config, tracking_uri, tmp_path):
    keyed_vectors = pytest.importorskip("gensim.models").KeyedVectors
    corpus = tmp_path / "planted.txt"
    corpus.write_text(planted_text(seed=0))
    probes = [f"{side}{pair}" for pair in range(PAIRS) for side in "ab"]
    cfg = compose_config("task=embed", "model=word2vec", "data=text", f"data.path={corpus}", "data.min_count=5",
                         "data.subsample=0.01", "data.window=2", "data.batch_size=256", "model.embedding_dim=16",
                         "optimizer.lr=0.02", "trainer.max_epochs=4", f"task.probes=[{','.join(probes)}]",
                         "task.neighbours=3", *QUIET)
    metrics = run(cfg, overrides=[])
    assert 0 < metrics["test/loss"] < 6 * math.log(2)  # below what zero vectors score: they learned something
    client, tracked = only_run(tracking_uri)
    assert {"plots/words.png", "evaluation/neighbours.json", "evaluation/vectors.txt"} <= artifacts(
        client, tracked.info.run_id)
    neighbours = json.loads(mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/evaluation/neighbours.json"))
    partner = {probe: {"a": "b", "b": "a"}[probe[0]] + probe[1:] for probe in probes}
    assert {probe: found[0][0] for probe, found in neighbours.items()} == partner
    vectors = keyed_vectors.load_word2vec_format(
        mlflow.artifacts.download_artifacts(f"runs:/{tracked.info.run_id}/evaluation/vectors.txt"), binary=False)
    assert {probe: vectors.most_similar(probe, topn=1)[0][0] for probe in probes} == partner
    description = json.loads(mlflow.artifacts.load_text(f"runs:/{tracked.info.run_id}/data/description.json"))
    model = mlflow.pytorch.load_model(f"runs:/{tracked.info.run_id}/model")
    ids = torch.tensor([description["words"].index(probe) for probe in probes[:2]])
    assert torch.allclose(model(ids), torch.tensor(vectors[probes[:2]]), atol=1e-6)


def test_a_sweep_of_decoders_ranks_by_the_lowest_validation_loss(run_py, tracking_uri):
    result = run_py("-m", "task=reconstruct", "model=conv_autoencoder", "model.decoder=unpool,upsample",
                    "trainer.max_epochs=1", *QUIET)
    assert result.returncode == 0, result.stderr[-3000:]
    client, runs = all_runs(tracking_uri)
    (parent,) = [tracked for tracked in runs if "best_run_id" in tracked.data.tags]
    children = [tracked for tracked in runs if tracked is not parent]
    best = min(children, key=lambda child: child.data.metrics["val/loss_best"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best/val/loss_best"] == best.data.metrics["val/loss_best"]
    assert {"sweep/summary.md", "sweep/curves.png"} <= artifacts(client, parent.info.run_id)
    assert "test/pca_mse" in mlflow.artifacts.load_text(f"runs:/{parent.info.run_id}/sweep/summary.md")


# --- every task × model × data: one batch, or one line ------------------------------------------------------
OFFLINE = {"digits", "moons", "spirals", "xor", "cartpole", "acrobot"}  # made here; text, chars: small files below


def data_overrides(data: str, tmp_path) -> list[str]:
    """Small real files for the data that read files; image sets (mnist, ...) are composed only: their files are
    generated in test_images.py."""
    if data == "text":
        corpus = tmp_path / "corpus.txt"
        corpus.write_text(planted_text(seed=1, length=3000))
        return [f"data.path={corpus}", "data.min_count=2"]
    if data == "chars":
        folder = tmp_path / "names"
        folder.mkdir(exist_ok=True)
        for language in ("Anglo", "Basque"):
            names = [language[:2] + vowel + end for vowel in "aeiou" for end in ("l", "n", "r", "s", "ta", "nd")]
            (folder / f"{language}.txt").write_text("\n".join(names) + "\n")
        return [f"data.root={tmp_path}", "data.folder=names"]
    return []


@pytest.mark.parametrize("task,model,data", list(itertools.product(TASKS, MODELS, DATA)))
def test_every_task_model_data_runs_one_batch_or_is_refused_in_one_line(compose_config, tmp_path, task, model,
                                                                        data):
    overrides = [f"task={task}", f"model={model}", f"data={data}", "trainer=debug", "logger=none",
                 "callbacks=none", "threads=1"]
    if data not in OFFLINE | {"text", "chars"}:
        overrides += ["data.download=false"]
    cfg = compose_config(*overrides, *data_overrides(data, tmp_path))
    try:
        if data in OFFLINE | {"text", "chars"}:
            metrics = run(cfg, overrides=[])
            assert any(key.startswith("test/") and math.isfinite(value) for key, value in metrics.items())
        else:
            check_job(cfg)  # no files here: the model's forward pass on stand-in inputs of the data's shape
    except (ConfigError, InstantiationException) as error:  # what run.py prints: cli.one_line
        message = one_line(error)
        assert "\n" not in message and len(message) < 400, message
        assert any(name in message for name in (f"task={task}", f"task.", f"model.", "model ", f"data={data}")), message


def test_each_task_yaml_and_new_model_yaml_match_their_classes():
    for task in TASKS:
        cls = get_class(instantiate_target("task", task))
        keys = set(options_keys("task", task)) - {"_target_"}
        parameters = set(inspect.signature(cls).parameters) - {"model", "optimizer", "scheduler"}
        assert keys == parameters, task
    for model in ("conv_autoencoder", "linear_autoencoder", "vae", "conv_vae", "word2vec"):
        keys = set(options_keys("model", model)) - {"_target_"}
        assert keys == set(inspect.signature(get_class(instantiate_target("model", model))).parameters), model


def options_keys(group: str, option: str) -> list[str]:
    import yaml

    return list(yaml.safe_load((CONF / group / f"{option}.yaml").read_text()))


def instantiate_target(group: str, option: str) -> str:
    import yaml

    return yaml.safe_load((CONF / group / f"{option}.yaml").read_text())["_target_"]


@pytest.mark.parametrize("overrides,message", [
    (["task=reconstruct", "model=mlp"], "model MLP has no encode/decode/code_size: task=reconstruct trains autoencoders"),
    (["task=reconstruct", "model=vae"], "model VAE outputs a tuple, as a VAE does: train it with task=vae"),
    (["task=vae", "model=conv_autoencoder"], "model ConvAutoencoder is not a VAE"),
    (["task=reconstruct", "model=linear_autoencoder", "data=moons"], "task=reconstruct needs image data"),
    (["task=reconstruct", "task.loss=l1", "model=conv_autoencoder"],
     "task.loss='l1' is invalid for task=reconstruct: must be one of mse, bce"),
    (["task=embed", "model=mlp"], "task=embed needs a word corpus with context windows (data=text): data=digits"),
    (["task=classify", "model=conv_autoencoder"], "model ConvAutoencoder outputs [1, 8, 8] for data=digits"),
    (["task=vae", "model=vae", "task.mode=max"], "task.monitor=val/loss with task.mode=max: task=vae keeps"),
])
def test_a_model_or_data_that_does_not_fit_the_task_is_one_line_naming_the_keys(compose_config, overrides, message):
    with pytest.raises(ConfigError) as error:
        cfg = compose_config(*overrides, "logger=none", *QUIET)
        check_job(cfg)
        run(cfg, overrides=[])
    assert message in str(error.value) and "\n" not in str(error.value)
