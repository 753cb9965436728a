"""modules=scratch: every scratch module matches torch.nn (outputs, buffers and all gradients; gradcheck), every
model family is rebuilt from them without a torch.nn module that computes left, a broken module is caught, and a run
with them trains through run.py and `dvc exp run` to the torch run's result."""
import copy
import json
import sys
import textwrap

import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, all_runs
from pipeline.errors import ConfigError
from pipeline.gradcheck import modules_config
from pipeline.models.building import build_network, module_layers
from pipeline.scratch.cases import CASES
from pipeline.scratch.check import check
from pipeline.scratch.swap import STRUCTURAL, swap_modules

SCRATCH = modules_config([])


@pytest.mark.parametrize("case", CASES, ids=[f"{case.key}: {case.label}" for case in CASES])
def test_each_scratch_module_passes_gradcheck_and_matches_torch(case):
    result = check(case, SCRATCH)
    assert result is not None, f"conf/modules/scratch.yaml replaces nothing for {case.key}"
    assert result.gradcheck, "torch.autograd.gradcheck failed"
    assert result.errors[torch.float64][0] <= 1e-6, result.errors[torch.float64]
    assert result.errors[torch.float32][0] <= 1e-4, result.errors[torch.float32]


def test_every_scratch_module_and_loss_of_the_config_has_a_case():
    checked = {case.key for case in CASES}
    assert set(SCRATCH["layers"]) <= checked and set(SCRATCH["losses"]) <= checked


IMAGES = ["regularization=batchnorm_dropout"]
SEQUENCES = ["data=chars", "data.num_classes=5", "data.vocab_size=30", "regularization=batchnorm"]
FAMILIES = {
    "linear": ["model=linear", *IMAGES],
    "mlp": ["model=mlp", *IMAGES],
    "lenet": ["model=lenet", *IMAGES],
    "cnn": ["model=cnn", *IMAGES],
    "vgg": ["model=vgg", *IMAGES],
    "resnet": ["model=resnet", *IMAGES],
    "rnn": ["model=rnn", *SEQUENCES, "model.num_layers=2", "model.bidirectional=true"],
    "lstm": ["model=lstm", *SEQUENCES],
    "gru": ["model=gru", *SEQUENCES, "model.embedding_dim=null"],
    "conv_autoencoder unpool": ["task=reconstruct", "model=conv_autoencoder", "model.decoder=unpool", *IMAGES],
    "conv_autoencoder upsample": ["task=reconstruct", "model=conv_autoencoder", "model.decoder=upsample"],
    "conv_autoencoder transposed": ["task=reconstruct", "model=conv_autoencoder", "model.decoder=transposed"],
    "linear_autoencoder": ["task=reconstruct", "model=linear_autoencoder", "model.activation=sigmoid"],
    "vae": ["task=vae", "model=vae", *IMAGES],
    "conv_vae": ["task=vae", "model=conv_vae"],
    "word2vec": ["data=text", "data.vocab_size=50", "task=embed", "model=word2vec"],
    "dcgan": ["task=gan", "model=dcgan"],
    "policy_mlp": ["data=cartpole", "task=dqn", "model=policy_mlp"],
}


def example_input(cfg, generator):
    shape = list(OmegaConf.select(cfg, "data.input_shape", default=None) or [5])
    if "vocab_size" in cfg.data and cfg.data.vocab_size:
        length = shape[0]
        ids = torch.randint(1, int(cfg.data.vocab_size), (6, length), generator=generator)
        ids[1, 3:] = 0  # a shorter sequence: padding after its end
        return ids
    return torch.rand(6, *shape, generator=generator, dtype=torch.float64)


def outputs(network, x):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)  # dropout masks and the VAE's noise: the same draws for both networks
        out = network(x)
    return [t for t in (out if isinstance(out, tuple) else (out,)) if t.is_floating_point()]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_model_family_is_built_from_scratch_modules_and_computes_what_torch_does(compose_config, family):
    cfg = compose_config(*FAMILIES[family], "modules=scratch")
    torch.manual_seed(0)
    reference = build_network(cfg.model).double().train()
    network = swap_modules(copy.deepcopy(reference), module_layers(cfg))
    kept = {type(m).__name__ for m in network.modules()
            if type(m).__module__.startswith("torch.nn") and not isinstance(m, STRUCTURAL)}
    assert not kept, f"{family} still computes with torch.nn's {kept}"

    x = example_input(cfg, torch.Generator().manual_seed(1))
    expected, got = outputs(reference, x), outputs(network, x)
    weights = [torch.randn_like(e) for e in expected]
    sum((e * w).sum() for e, w in zip(expected, weights)).backward()
    sum((g * w).sum() for g, w in zip(got, weights)).backward()
    for e, g in zip(expected, got):
        assert torch.allclose(g, e, atol=1e-9, rtol=1e-7)
    mine = dict(network.named_parameters())
    for name, parameter in reference.named_parameters():
        if parameter.grad is not None:
            assert torch.allclose(mine[name].grad, parameter.grad, atol=1e-9, rtol=1e-7), name


@pytest.mark.parametrize("family", ["mlp", "lenet", "lstm", "conv_autoencoder transposed", "dcgan"])
def test_scratch_networks_train_under_bf16_autocast_as_well_as_torch_does(compose_config, family):
    """trainer.precision=bf16-mixed: the gradients land in float32, no further from the full-precision ones than
    torch.nn's own under autocast (twice its error, or 5 %: bfloat16 keeps 3 significant digits)."""
    cfg = compose_config(*FAMILIES[family], "modules=scratch")
    torch.manual_seed(0)
    reference = build_network(cfg.model).train()
    networks = {"exact": reference, "torch": copy.deepcopy(reference),
                "scratch": swap_modules(copy.deepcopy(reference), module_layers(cfg))}
    x = example_input(cfg, torch.Generator().manual_seed(1))
    x = x.float() if x.is_floating_point() else x
    for name, network in networks.items():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name != "exact"):
            out = outputs(network, x)
        sum(o.float().sum() for o in out).backward()
    grads = {name: dict((key, p.grad) for key, p in network.named_parameters() if p.grad is not None)
             for name, network in networks.items()}
    for key, exact in grads["exact"].items():
        mine = grads["scratch"][key]
        assert mine.dtype == torch.float32 and torch.isfinite(mine).all(), key
        torch_error = (grads["torch"][key] - exact).norm() / exact.norm().clamp(min=1e-6)
        my_error = (mine - exact).norm() / exact.norm().clamp(min=1e-6)
        assert my_error <= max(2 * torch_error, 0.05), (key, my_error.item(), torch_error.item())


def test_a_swapped_network_keeps_its_tensors_and_draws_nothing_from_the_random_stream(compose_config):
    cfg = compose_config("model=lenet", "regularization=batchnorm", "modules=scratch")
    network = build_network(cfg.model)
    tensors = {name: id(t) for name, t in [*network.named_parameters(), *network.named_buffers()]}
    state = torch.get_rng_state()
    swapped = swap_modules(network, module_layers(cfg))
    assert torch.equal(torch.get_rng_state(), state)
    assert {name: id(t) for name, t in [*swapped.named_parameters(), *swapped.named_buffers()]} == tensors
    assert type(swapped.features[0]).__module__ == "pipeline.scratch.conv2d"


def broken_linear(folder):
    """A student's Linear whose weight gradient forgets to sum over the batch (it takes the first row only)."""
    (folder / "my_lab.py").write_text(textwrap.dedent("""
        import torch
        from pipeline.scratch.linear import Linear, LinearFunction

        class Forgetful(LinearFunction):
            @staticmethod
            def backward(ctx, grad_y):
                grad_x, grad_weight, grad_bias = LinearFunction.backward(ctx, grad_y)
                x, _ = ctx.saved_tensors
                return grad_x, grad_y[:1].t() @ x[:1], grad_bias

        class MyLinear(Linear):
            def forward(self, x):
                return Forgetful.apply(x, self.weight, self.bias)
    """))


def test_a_wrong_backward_fails_the_check_and_the_command_says_where(tmp_path, monkeypatch):
    import subprocess

    broken_linear(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = check(next(c for c in CASES if c.key == "Linear"), modules_config(["modules.layers.Linear=my_lab.MyLinear"]))
    assert not result.passed and not result.gradcheck
    assert "weight" in result.errors[torch.float64][1]

    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    command = [sys.executable, "-m", "pipeline.gradcheck", "linear"]
    mine = subprocess.run([*command, "modules.layers.Linear=my_lab.MyLinear"], capture_output=True, text=True,
                          env=env, cwd=tmp_path)
    assert mine.returncode == 1 and "FAIL" in mine.stdout and "gradient of weight" in mine.stdout
    ours = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert ours.returncode == 0 and ours.stdout.count(" ok") == 2 and "FAIL" not in ours.stdout


def test_the_command_checks_the_optimizers_against_torch_optim(capsys):
    from pipeline.gradcheck import main

    assert main(["sgd", "adam"]) == 0
    assert capsys.readouterr().out.count(" ok") == 4
    # AdamW decays the weights apart from the gradient: the same as Adam without weight decay, not with it.
    assert main(["adam", "optimizer._target_=torch.optim.AdamW"]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("scratch_adam")]
    assert rows[0].endswith("ok") and "FAIL" in rows[1] and "weight decay 0.01" in rows[1]


def test_the_check_runs_where_a_training_run_left_deterministic_algorithms_on():
    """torch.nn.MaxUnpool2d, the reference, refuses under deterministic algorithms (trainer.deterministic=true)."""
    mode = torch.get_deterministic_debug_mode()
    torch.set_deterministic_debug_mode("error")
    try:
        assert all(check(case, SCRATCH).passed for case in CASES if case.key == "MaxUnpool2d")
        assert torch.get_deterministic_debug_mode() == 2
    finally:
        torch.set_deterministic_debug_mode(mode)


@pytest.mark.parametrize("override,message", [
    ("+modules.layers.Linen=pipeline.scratch.linear.Linear", "'Linen' is not a torch.nn module class"),
    ("modules.layers.Linear=no_such_lab.Linear", "modules.layers.Linear='no_such_lab.Linear' cannot be imported"),
    ("modules.layers.Linear=torch.nn.Identity", "has no classmethod like(module)"),
    ("modules.layers.Linear=pipeline.scratch.embedding.Embedding", "Embedding.like() cannot build a replacement"),
    ("modules.layers.Linear=my_renamed_lab.Renamed", "the names must be the same"),
])
def test_a_bad_module_is_one_clear_line(compose_config, tmp_path, monkeypatch, override, message):
    (tmp_path / "my_renamed_lab.py").write_text(textwrap.dedent("""
        from torch import nn
        from pipeline.scratch.linear import Linear

        class Renamed(Linear):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.W = self.weight
                del self.weight
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_config("modules=scratch", override)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_network(cfg.model, module_layers(cfg))


@pytest.mark.parametrize("module,message", [
    (lambda: torch.nn.Embedding(4, 2, max_norm=1.0), r"Embedding\(max_norm=1.0\) is not implemented"),
    (lambda: torch.nn.Conv2d(2, 2, 3, dilation=2), r"Conv2d\(dilation="),
    (lambda: torch.nn.LSTM(2, 4, proj_size=2), r"proj_size"),
])
def test_a_setting_a_scratch_module_lacks_is_refused_by_name(module, message):
    with pytest.raises(ConfigError, match=message):
        swap_modules(torch.nn.Sequential(module()), SCRATCH["layers"])


def test_run_py_refuses_a_module_it_cannot_import_in_one_line(run_py):
    result = run_py("modules=scratch", "modules.layers.ReLU=my_missing_lab.ReLU", "trainer.max_epochs=1")
    assert result.returncode == 2
    assert "modules.layers.ReLU='my_missing_lab.ReLU' cannot be imported" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_py_trains_lenet_with_scratch_modules_and_optimizer_and_records_them(run_py, tracking_uri):
    """The whole command: the model, its loss and its optimizer the labs' own (that they compute what torch does is
    the family test above, in float64), tracked like any run, with the CNN's plots."""
    result = run_py("model=lenet", "regularization=batchnorm_dropout", "trainer.max_epochs=2",
                    "optimizer=scratch_momentum", "modules=scratch")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "modules: replaced Conv2d x2, BatchNorm2d x2, ReLU x4, MaxPool2d x2" in result.stderr + result.stdout
    client, (run,) = all_runs(tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["modules.layers.Conv2d"] == "pipeline.scratch.conv2d.Conv2d"
    assert run.data.params["task.loss_functions.cross_entropy"] == "pipeline.scratch.cross_entropy.cross_entropy"
    assert run.data.params["optimizer._target_"] == "pipeline.scratch.sgd.SGD"
    assert run.data.metrics["test/acc"] > 0.5
    plots = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/filters.png", "plots/feature_maps.png", "plots/explanations.png"} <= plots


def test_dvc_exp_run_trains_with_scratch_modules(tmp_path):
    from test_dvc import TINY, make_repo, read_metrics, set_flags, sh

    repo = make_repo(tmp_path / "project", *TINY)
    sh(repo, "dvc", "exp", "run", *set_flags([*TINY, "modules=scratch"]))
    params = OmegaConf.load(repo / "params.yaml")
    assert params.modules.layers.Conv2d == "pipeline.scratch.conv2d.Conv2d"
    state = torch.load(repo / "results/train/model.ckpt", weights_only=False)["state_dict"]
    assert "model.features.0.weight" in state
    assert read_metrics(repo)["acc"] > 0.3
    _, runs = all_runs(f"sqlite:///{repo}/mlflow.db")
    assert runs[0].data.params["modules.layers.Conv2d"] == "pipeline.scratch.conv2d.Conv2d"


def test_every_scratch_module_with_weights_draws_them_afresh_for_the_explanations_sanity_check(compose_config):
    """explanations.reinitialised() calls reset_parameters(): a scratch network must not come back unchanged."""
    from pipeline.explanations import reinitialised

    for family in ("lenet", "conv_autoencoder transposed", "lstm", "mlp"):
        cfg = compose_config(*FAMILIES[family], "regularization=none", "modules=scratch")
        network = build_network(cfg.model, module_layers(cfg))
        fresh = dict(reinitialised(network).named_parameters())
        for name, parameter in network.named_parameters():
            if parameter.requires_grad and parameter.dim() > 1:
                assert not torch.equal(fresh[name], parameter), (family, name)
