"""The autoencoders and VAEs of lab 6: shapes round-trip on digits, MNIST and CIFAR-10 sizes, un-pooling puts each
maximum back where it was, the linear autoencoder's weights are tied, the negative ELBO matches hand-computed cases,
each model learns held-out digits (the un-pooling autoencoder better than PCA), and torch.export traces each."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.autoencoder import ConvAutoencoder, LinearAutoencoder, Unpool
from pipeline.models.vae import VAE, ConvVAE, kl_divergence, negative_elbo

SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
DECODERS = ["unpool", "upsample", "transposed"]
CODE_SIZE = 8


def build(model: str, input_shape, dropout=0.0, batchnorm=False) -> nn.Module:
    """Each model as its conf/model YAML would build it, small."""
    regularization = dict(dropout=dropout, batchnorm=batchnorm)
    if model in DECODERS:
        return ConvAutoencoder(list(input_shape), [16, 32], CODE_SIZE, model, **regularization)
    return {"linear": lambda: LinearAutoencoder(list(input_shape), CODE_SIZE, **regularization),
            "vae": lambda: VAE(list(input_shape), [64], CODE_SIZE, **regularization),
            "conv_vae": lambda: ConvVAE(list(input_shape), [16, 32], CODE_SIZE, **regularization)}[model]()


MODELS = [*DECODERS, "linear", "vae", "conv_vae"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("channels", [[4], [4, 8, 8]], ids=["one_pool", "three_pools"])
def test_conv_autoencoder_gives_back_the_input_shape(shape, decoder, channels):
    # Three pools make odd sizes on MNIST (28 → 14 → 7 → 3) and shrink digits to 1x1 (8 → 4 → 2 → 1).
    model = ConvAutoencoder(list(SHAPES[shape]), channels, 5, decoder, dropout=0.2, batchnorm=True)
    x = torch.rand(2, *SHAPES[shape])
    code, indices = model.encode(x)
    assert code.shape == (2, 5)
    assert len(indices) == len(channels)
    assert model.decode(code, indices).shape == x.shape
    assert model(x).shape == x.shape


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("model", ["linear", "vae", "conv_vae"])
def test_the_other_models_give_back_the_input_shape(shape, model):
    network = build(model, SHAPES[shape], dropout=0.2, batchnorm=True)
    x = torch.rand(2, *SHAPES[shape])
    if model == "linear":
        assert network.encode(x).shape == (2, CODE_SIZE)
        assert network(x).shape == x.shape
        return
    logits, mu, logvar = network(x)
    assert logits.shape == x.shape
    assert mu.shape == logvar.shape == (2, CODE_SIZE) == (2, network.latent_dim)
    # Sampling from the prior needs only the decoder.
    assert network.decode(torch.randn(3, network.latent_dim)).shape == (3, *SHAPES[shape])


def test_unpooling_puts_each_maximum_back_where_the_pool_found_it():
    # A 5x5 image: the pool sees four 2x2 windows and drops the fifth row and column; unpooling back to 5x5
    # must give zeros everywhere except at each window's argmax, which holds that window's maximum.
    model = ConvAutoencoder([1, 5, 5], [1], 2, "unpool")
    image = torch.tensor([[3., 1., 0., 9., 2.],
                          [2., 8., 4., 1., 7.],
                          [5., 0., 6., 2., 1.],
                          [1., 4., 3., 7., 0.],
                          [9., 9., 9., 9., 9.]]).view(1, 1, 5, 5)
    expected = torch.tensor([[0., 0., 0., 9., 0.],
                             [0., 8., 0., 0., 0.],
                             [5., 0., 0., 0., 0.],
                             [0., 0., 0., 7., 0.],
                             [0., 0., 0., 0., 0.]]).view(1, 1, 5, 5)
    pooled, indices = model.pool(image)
    assert pooled.flatten().tolist() == [8., 9., 5., 7.]
    assert torch.equal(model.upsample[0](pooled, indices), expected)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (28, 28)])
def test_unpooling_gives_what_max_unpool2d_gives_and_is_allowed_under_deterministic_algorithms(size):
    torch.manual_seed(0)
    x = torch.randn(3, 4, *size, requires_grad=True)
    pooled, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    unpool = Unpool(4, size)
    deterministic = torch.are_deterministic_algorithms_enabled()  # a Lightning run earlier in this process sets it
    try:
        torch.use_deterministic_algorithms(False)
        expected = torch.nn.MaxUnpool2d(2)(pooled, indices, output_size=size)
        torch.use_deterministic_algorithms(True)
        with pytest.raises(RuntimeError, match="deterministic"):  # why Unpool is not MaxUnpool2d itself
            torch.nn.MaxUnpool2d(2)(pooled, indices, output_size=size)
        got = unpool(pooled, indices)
        got.sum().backward()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert torch.equal(got, expected)
    assert x.grad.sum() == pooled.numel()  # each maximum's gradient reaches its input pixel


def test_each_unpooling_uses_its_own_pools_indices():
    # Through the whole decoder: moving one maximum in the input moves where the decoder's un-pooling puts it,
    # so the reconstruction changes although the code is the same.
    torch.manual_seed(0)
    model = ConvAutoencoder([1, 8, 8], [2, 2], 3, "unpool")
    x = torch.rand(1, 1, 8, 8)
    code, indices = model.encode(x)
    moved = [where.clone() for where in indices]
    moved[0] = torch.where(moved[0] % 2 == 0, moved[0] + 1, moved[0] - 1)  # each maximum to its window's neighbour
    assert not torch.allclose(model.decode(code, indices), model.decode(code, moved))
    with pytest.raises(ValueError, match="pooling indices"):
        model.decode(code)


@pytest.mark.parametrize("decoder", ["upsample", "transposed"])
def test_the_other_decoders_decode_a_code_alone(decoder):
    model = ConvAutoencoder([1, 28, 28], [4, 8], 3, decoder)
    assert model.decode(torch.randn(2, 3)).shape == (2, 1, 28, 28)


def test_unknown_decoder_is_one_line_naming_the_key_and_the_choices():
    with pytest.raises(ConfigError) as error:
        ConvAutoencoder([1, 8, 8], [4], 2, "bilinear")
    message = str(error.value)
    assert message == "model.decoder='bilinear' is not one of unpool, upsample, transposed"


@pytest.mark.parametrize("model_class", [ConvAutoencoder, ConvVAE])
def test_too_many_pools_are_refused_naming_the_key(model_class):
    with pytest.raises(ConfigError) as error:
        model_class([1, 8, 8], [4, 4, 4, 4], 2)
    assert "model.channels=[4, 4, 4, 4]" in str(error.value)
    assert "[1, 8, 8]" in str(error.value)
    assert "\n" not in str(error.value)


def test_linear_autoencoder_has_one_weight_matrix_used_both_ways():
    torch.manual_seed(0)
    model = LinearAutoencoder([1, 8, 8], 5)
    pixels = 64
    parameters = dict(model.named_parameters())
    assert set(parameters) == {"encoder.weight", "encoder.bias", "decoder_bias"}
    assert sum(p.numel() for p in model.parameters()) == pixels * 5 + 5 + pixels  # one W, two biases
    # Decoding is Wᵀ·code + c with the encoder's W.
    code = torch.randn(3, 5)
    expected = code @ model.encoder.weight + model.decoder_bias
    assert torch.allclose(model.decode(code).flatten(1), expected, atol=1e-6)
    # Changing the encoder's weight changes the decoding, and decoding's gradient reaches that weight.
    before = model.decode(code).detach()
    with torch.no_grad():
        model.encoder.weight[2, 10] += 1.0
    after = model.decode(code).detach()
    assert not torch.allclose(before, after)
    assert torch.allclose((after - before).flatten(1)[:, 10], code[:, 2])  # exactly that entry, times its code
    model.decode(code).sum().backward()
    assert model.encoder.weight.grad is not None and model.encoder.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model", MODELS)
def test_regularization_keys_add_their_layers(model):
    plain, regularized = build(model, SHAPES["digits"]), build(model, SHAPES["digits"], dropout=0.3, batchnorm=True)
    assert not any(isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)) for m in plain.modules())
    assert {m.p for m in regularized.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in regularized.modules())


def test_negative_elbo_of_zero_logits_and_a_standard_normal_posterior_is_n_pixels_ln_2():
    # sigmoid(0) = 1/2 for every pixel, whether it is 0 or 1: ln 2 nats each; q = N(0, I) is the prior: KL 0.
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    zeros = torch.zeros(4, 3)
    assert negative_elbo(torch.zeros_like(x), x, zeros, zeros).item() == pytest.approx(64 * math.log(2))
    assert torch.equal(kl_divergence(zeros, zeros), torch.zeros(4))


def test_negative_elbo_matches_the_closed_form_per_image_averaged_over_the_batch():
    # Image 1: one pixel x = 1 with logit ln 3 (p = 3/4); q = N((1, -2), diag(4, 1)).
    # KL = ½ Σ (σ² + μ² − 1 − ln σ²) = ½ [(4 + 1 − 1 − ln 4) + (1 + 4 − 1 − 0)] = 4 − ln 2.
    # Image 2: x = 0 with logit ln 3 (so −ln ¼), q = N(0, I) (KL 0).
    logits = torch.full((2, 1, 1, 1), math.log(3))
    x = torch.tensor([1.0, 0.0]).view(2, 1, 1, 1)
    mu = torch.tensor([[1.0, -2.0], [0.0, 0.0]])
    logvar = torch.tensor([[math.log(4), 0.0], [0.0, 0.0]])
    first = -math.log(3 / 4) + 4 - math.log(2)
    second = -math.log(1 / 4)
    assert torch.allclose(kl_divergence(mu, logvar), torch.tensor([4 - math.log(2), 0.0]))
    assert negative_elbo(logits, x, mu, logvar).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_reparameterize_draws_from_torchs_global_rng_and_passes_gradients():
    model = VAE([4], [], 2)
    mu, logvar = torch.tensor([[1.0, -1.0]], requires_grad=True), torch.tensor([[0.0, math.log(4)]],
                                                                                requires_grad=True)
    torch.manual_seed(7)
    z = model.reparameterize(mu, logvar)
    torch.manual_seed(7)
    eps = torch.randn(1, 2)
    assert torch.allclose(z, mu + torch.tensor([[1.0, 2.0]]) * eps)
    z.sum().backward()
    assert mu.grad is not None and logvar.grad is not None


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1]: the first 1500 to train on, the other 297 held out."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    return images[:1500], images[1500:]


def error(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What each model minimises: mean squared error for the autoencoders, the negative ELBO for the VAEs."""
    if isinstance(model, (VAE, ConvVAE)):
        logits, mu, logvar = model(x)
        return negative_elbo(logits, x, mu, logvar)
    return ((model(x) - x) ** 2).mean()


def held_out_error(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)  # a VAE samples: the same noise before and after training
        return error(model, x).item()


@functools.cache
def trained(model: str) -> tuple[nn.Module, float, float]:
    """(the model after 300 Adam steps on the training digits, its held-out error before, after)."""
    train, test = digits()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a small shared machine, more threads for layers this small are much slower
    try:
        torch.manual_seed(0)
        network = build(model, SHAPES["digits"])
        optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
        before = held_out_error(network, test)
        for _ in range(300):
            optimizer.zero_grad()
            error(network, train[torch.randint(0, len(train), (128,))]).backward()
            optimizer.step()
        return network, before, held_out_error(network, test)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("model", MODELS)
def test_a_few_hundred_steps_halve_the_held_out_error(model):
    _, before, after = trained(model)
    # Grey pixels put a floor under BCE: its least value, at logits equal to the pixels, is their entropy. For the
    # VAEs it is the part above that floor that must halve (the mean squared error's floor is 0).
    _, test = digits()
    floor = F.binary_cross_entropy(test, test, reduction="sum").item() / len(test) if "vae" in model else 0.0
    print(f"{model}: held-out error {before:.4f} -> {after:.4f} (floor {floor:.4f})")
    assert after - floor < 0.5 * (before - floor), (before, after, floor)


def test_the_unpooling_autoencoder_beats_pca_with_the_same_code_size():
    # Measured: about 0.011 against PCA's 0.025 (seeds 0-2: 0.42-0.49 of PCA's). The indices carry where each
    # maximum was, which PCA's 8 numbers cannot.
    from sklearn.decomposition import PCA

    train, test = digits()
    pca = PCA(CODE_SIZE).fit(train.flatten(1).numpy())
    projected = pca.inverse_transform(pca.transform(test.flatten(1).numpy()))
    pca_error = float(((torch.from_numpy(projected).float() - test.flatten(1)) ** 2).mean())
    _, _, autoencoder_error = trained("unpool")
    print(f"held-out MSE: unpool autoencoder {autoencoder_error:.4f}, PCA {pca_error:.4f}")
    assert autoencoder_error < 0.7 * pca_error, (autoencoder_error, pca_error)


@pytest.mark.parametrize("model", MODELS)
def test_torch_export_traces_the_model(model):
    # MLflow logs a model as a torch.export program; one that cannot be traced falls back to a pickle.
    network = build(model, SHAPES["mnist"], dropout=0.3, batchnorm=True).eval()
    x = torch.rand(2, *SHAPES["mnist"])
    program = torch.export.export(network, (x,))
    with torch.no_grad():
        torch.manual_seed(0)  # the VAEs sample: the same noise for both
        exported = program.module()(x)
        torch.manual_seed(0)
        expected = network(x)
    for got, want in zip(exported if isinstance(exported, tuple) else [exported],
                         expected if isinstance(expected, tuple) else [expected]):
        assert torch.allclose(got, want, atol=1e-5)
