"""The scratch convolution, transposed convolution, max pooling and unpooling: their hand-written backwards pass
gradcheck, they match torch.nn with the same weights (outputs and every gradient) at the shapes the labs use, in
both memory layouts, pooling breaks ties as torch does, unpooling matches nn.MaxUnpool2d and the autoencoder's
Unpool (also where torch refuses to run), and settings they do not implement are refused by name."""
import re

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from pipeline.models.autoencoder import Unpool
from pipeline.scratch import conv2d
from pipeline.scratch.check import nondeterministic_allowed
from pipeline.scratch.conv2d import Conv2d, Conv2dFunction
from pipeline.scratch.conv_transpose2d import ConvTranspose2d, ConvTranspose2dFunction
from pipeline.scratch.im2col import col2im, im2col
from pipeline.scratch.max_pool2d import MaxPool2d, MaxPool2dFunction
from pipeline.scratch.max_unpool2d import MaxUnpool2d, MaxUnpool2dFunction

TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


@pytest.fixture(params=["positions_innermost", "channels_innermost"])
def layout(request, monkeypatch):
    """Both column layouts the convolution chooses between (by channel count), whatever the channel count."""
    monkeypatch.setattr(conv2d, "FEW_CHANNELS", 10**6 if request.param == "positions_innermost" else 0)
    return request.param


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value - reference).abs().max() / max(1.0, reference.abs().max().item())).item()


def assert_matches(scratch: nn.Module, reference: nn.Module, x: torch.Tensor, *extra, input_grad: bool = True):
    """Same weights, same input: outputs, the input's gradient and every parameter's gradient agree."""
    scratch.load_state_dict(reference.state_dict())
    reference.zero_grad(set_to_none=True)  # a reference may be compared more than once
    inputs = [x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)]
    outputs = [module(i, *extra) for module, i in zip((scratch, reference), inputs)]
    outputs = [o[0] if isinstance(o, tuple) else o for o in outputs]
    upstream = torch.randn_like(outputs[1])
    for output in outputs:
        output.backward(upstream)
    tolerance = TOLERANCE[x.dtype]
    assert relative_error(outputs[0], outputs[1]) < tolerance
    if input_grad:
        assert relative_error(inputs[0].grad, inputs[1].grad) < tolerance
    else:
        assert inputs[0].grad is None
    for (name, ours), theirs in zip(scratch.named_parameters(), reference.parameters()):
        assert relative_error(ours.grad, theirs.grad) < tolerance, name


def test_im2col_and_col2im_are_adjoint():
    # <im2col(x), c> = <x, col2im(c)> for every x and c: col2im is exactly im2col's backward.
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    for geometry in [((3, 3), (1, 1), (1, 1)), ((3, 2), (2, 1), (1, 0)), ((2, 2), (2, 2), (0, 0))]:
        for positions_innermost in (False, True):
            cols = im2col(x, *geometry, positions_innermost=positions_innermost)
            c = torch.randn_like(cols)
            back = col2im(c.t().contiguous().t() if positions_innermost else c, x.shape, *geometry)
            assert torch.allclose((cols * c).sum(), (x * back).sum())


CONV_CASES = {  # (in, out, kernel, stride, padding, bias): padded, strided, rectangular, 1x1, without bias
    "3x3": (2, 3, 3, 1, 1, True), "3x3_stride2": (3, 2, 3, 2, 1, True), "rect": (2, 2, (3, 2), (2, 1), (1, 0), True),
    "1x1_stride2": (3, 4, 1, 2, 0, False), "5x5": (1, 2, 5, 1, 2, False),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_gradcheck(case, layout):
    in_channels, out_channels, kernel, stride, padding, bias = CONV_CASES[case]
    module = Conv2d(in_channels, out_channels, kernel, stride, padding, bias).double()
    x = torch.randn(1, in_channels, 5, 4, dtype=torch.float64, requires_grad=True)
    args = (module.weight, module.bias, module.stride, module.padding)
    assert torch.autograd.gradcheck(lambda x, *rest: Conv2dFunction.apply(x, *rest), (x, *args))
    # the first layer: no input gradient wanted, and none computed
    assert torch.autograd.gradcheck(lambda w: Conv2dFunction.apply(x.detach(), w, *args[1:]), (module.weight,))


TRANSPOSED_CASES = {  # (in, out, kernel, stride, padding, output_padding): the autoencoder's, DCGAN's, overlapping
    "2x2_stride2_odd": (2, 3, 2, 2, 0, 1), "4x4_stride2_pad1": (3, 2, 4, 2, 1, 0), "3x3": (2, 2, 3, 1, 1, 0),
    "3x3_stride3": (2, 1, 3, 3, 1, 2),
}


@pytest.mark.parametrize("case", TRANSPOSED_CASES)
def test_conv_transpose2d_gradcheck(case):
    in_channels, out_channels, kernel, stride, padding, output_padding = TRANSPOSED_CASES[case]
    module = ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, output_padding).double()
    x = torch.randn(1, in_channels, 4, 3, dtype=torch.float64, requires_grad=True)
    args = (module.weight, module.bias, module.stride, module.padding, module.output_padding)
    assert torch.autograd.gradcheck(lambda x, *rest: ConvTranspose2dFunction.apply(x, *rest), (x, *args))


POOL_CASES = {"2x2": (2, 2, 0), "3x3_stride2_pad1": (3, 2, 1), "3x3_stride1_pad1": (3, 1, 1), "2x2_stride1": (2, 1, 0)}


@pytest.mark.parametrize("case", POOL_CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_max_pool2d_gradcheck(case, channels_last):
    kernel, stride, padding = POOL_CASES[case]
    x = torch.randn(1, 2, 7, 6, dtype=torch.float64)  # distinct values: no tie sits on a kink
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    geometry = ((kernel, kernel), (stride, stride), (padding, padding))
    assert torch.autograd.gradcheck(lambda x: MaxPool2dFunction.apply(x, *geometry)[0], (x.requires_grad_(),))


def test_max_unpool2d_gradcheck():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    pooled, indices = nn.functional.max_pool2d(x, 2, return_indices=True)
    assert torch.autograd.gradcheck(lambda p: MaxUnpool2dFunction.apply(p, indices, 7, 6),
                                    (pooled.requires_grad_(),))


LAB_CONVS = {  # (batch, in, out, kernel, stride, padding, image size): the labs' layers, small batches
    "lenet_conv1": (2, 1, 6, 5, 1, 2, 28), "lenet_conv2": (2, 6, 16, 5, 1, 2, 14),
    "cifar_conv1": (1, 3, 64, 3, 1, 1, 32), "cifar_conv2": (1, 64, 128, 3, 1, 1, 16),
    "cifar_conv3": (1, 128, 256, 3, 1, 1, 8), "resnet_3x3_stride2": (1, 64, 128, 3, 2, 1, 16),
    "resnet_1x1_stride2": (1, 64, 128, 1, 2, 0, 16),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAB_CONVS)
def test_conv2d_matches_torch_at_lab_shapes(case, dtype):
    batch, in_channels, out_channels, kernel, stride, padding, size = LAB_CONVS[case]
    reference = nn.Conv2d(in_channels, out_channels, kernel, stride, padding).to(dtype)
    x = torch.randn(batch, in_channels, size, size, dtype=dtype)
    assert_matches(Conv2d.like(reference).to(dtype), reference, x, input_grad=in_channels > 3)


@pytest.mark.parametrize("layout_of_x", ["nchw", "channels_last"])
def test_conv2d_takes_either_layout_and_returns_channels_last(layout_of_x, layout):
    reference = nn.Conv2d(6, 16, 5, padding=2)
    x = torch.randn(2, 6, 14, 14)
    if layout_of_x == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert_matches(Conv2d.like(reference), reference, x)
    assert Conv2d.like(reference)(x).is_contiguous(memory_format=torch.channels_last)  # the GEMM's NHWC, not copied


def test_conv2d_saves_only_what_its_backward_needs():
    module = Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 5, 5)
    first_layer = module(x).grad_fn.saved_tensors  # x needs no gradient: the kernel is not kept for col2im
    assert first_layer[0] is not None and first_layer[1] is None
    module.weight.requires_grad_(False)
    frozen = module(x.requires_grad_()).grad_fn.saved_tensors  # frozen weight: the columns are not kept
    assert frozen[0] is None and frozen[1] is not None


@pytest.mark.parametrize("reference", [nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(3, 8, 4, 2, 1)],
                         ids=["conv", "transposed"])
def test_convolutions_train_under_bfloat16_autocast(reference):
    # trainer.precision=bf16-mixed: the GEMM gives bfloat16, so does the gradient arriving at the backward, while x
    # and the weight stay float32; the gradients come out float32 and agree with torch's to bfloat16 precision.
    scratch = type(reference).__name__
    module = {"Conv2d": Conv2d, "ConvTranspose2d": ConvTranspose2d}[scratch].like(reference)
    module.load_state_dict(reference.state_dict())
    results, dtypes = [], []
    for layer in (module, reference):
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0), requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        y.float().pow(2).sum().backward()
        results.append((y.float(), x.grad, layer.weight.grad))
        dtypes.append((y.dtype, x.grad.dtype, layer.weight.grad.dtype))
    assert dtypes[0] == dtypes[1] == (torch.bfloat16, torch.float32, torch.float32)
    for ours, theirs in zip(*results):
        assert relative_error(ours, theirs) < 2e-2


LAB_TRANSPOSED = {  # (batch, in, out, kernel, stride, padding, output_padding, image size)
    "autoencoder_14_to_28": (2, 16, 16, 2, 2, 0, 0, 14), "autoencoder_3_to_7": (2, 32, 32, 2, 2, 0, 1, 3),
    "dcgan_7_to_14": (2, 64, 32, 4, 2, 1, 0, 7), "dcgan_to_image": (2, 32, 1, 4, 2, 1, 0, 14),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LAB_TRANSPOSED)
def test_conv_transpose2d_matches_torch_at_lab_shapes(case, dtype):
    batch, in_channels, out_channels, kernel, stride, padding, output_padding, size = LAB_TRANSPOSED[case]
    reference = nn.ConvTranspose2d(in_channels, out_channels, kernel, stride, padding, output_padding).to(dtype)
    x = torch.randn(batch, in_channels, size, size, dtype=dtype)
    assert_matches(ConvTranspose2d.like(reference).to(dtype), reference, x)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert_matches(ConvTranspose2d.like(reference).to(dtype), reference, channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_matches_torch_values_indices_and_gradients(case, dtype):
    kernel, stride, padding = POOL_CASES[case]
    reference = nn.MaxPool2d(kernel, stride, padding, return_indices=True)
    for x in [torch.randn(2, 6, 28, 28, dtype=dtype),
              torch.randn(1, 64, 16, 16, dtype=dtype).contiguous(memory_format=torch.channels_last)]:
        assert_matches(MaxPool2d.like(reference), reference, x)
        (ours, our_indices), (theirs, their_indices) = MaxPool2d.like(reference)(x), reference(x)
        assert torch.equal(our_indices, their_indices)
        assert ours.is_contiguous(memory_format=torch.channels_last) == theirs.is_contiguous(
            memory_format=torch.channels_last)


@pytest.mark.parametrize("case", POOL_CASES)
def test_max_pool2d_breaks_ties_as_torch_does(case):
    # After a ReLU most windows are all zeros: the first position in scan order is the maximum, and gets the
    # gradient; here also ties between two positive values, and overlapping windows sharing a maximum.
    kernel, stride, padding = POOL_CASES[case]
    x = torch.randn(2, 4, 9, 8).relu().round()
    reference = nn.MaxPool2d(kernel, stride, padding, return_indices=True)
    ours, theirs = MaxPool2d.like(reference)(x), reference(x)
    assert torch.equal(ours[1], theirs[1]) and torch.equal(ours[0], theirs[0])
    assert_matches(MaxPool2d.like(reference), reference, x)


@pytest.mark.parametrize("kernel, stride, padding, size", [(2, 2, 0, (8, 10)), (2, 2, 0, (7, 9)), (3, 3, 1, (7, 9)),
                                                           (3, 2, 1, (9, 9))])
def test_max_unpool2d_matches_torch(kernel, stride, padding, size):
    x = torch.randn(2, 5, *size)
    pooled, indices = nn.functional.max_pool2d(x, kernel, stride, padding, return_indices=True)
    reference = nn.MaxUnpool2d(kernel, stride, padding)
    with nondeterministic_allowed():  # torch's refuses under deterministic algorithms, which an earlier run may leave on
        assert_matches(MaxUnpool2d.like(reference), reference, pooled, indices, x.shape[-2:])
        assert_matches(MaxUnpool2d.like(reference), reference, pooled, indices, x.shape)
        if size == (8, 10):  # torch's default output size is the size before the pool only where the pool lost nothing
            assert_matches(MaxUnpool2d.like(reference), reference, pooled, indices)


@pytest.mark.parametrize("size", [(28, 28), (7, 7)], ids=["even", "odd"])
def test_max_unpool2d_stands_in_for_the_autoencoders_unpool(size):
    # Converted from Unpool it keeps the size before the pool and is called as unpool(x, indices); it runs under
    # deterministic algorithms (the trainer's default), where nn.MaxUnpool2d refuses to.
    x = torch.randn(2, 4, *size)
    pooled, indices = nn.functional.max_pool2d(x, 2, return_indices=True)
    original = Unpool(4, size)
    unpool = MaxUnpool2d.like(original)
    mode = torch.get_deterministic_debug_mode()
    torch.set_deterministic_debug_mode("error")  # use_deterministic_algorithms(True), without importing inductor
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            nn.MaxUnpool2d(2)(pooled, indices, output_size=size)
        assert_matches(unpool, original, pooled, indices)
    finally:
        torch.set_deterministic_debug_mode(mode)
    assert unpool(pooled, indices).shape == x.shape


def test_max_unpool2d_refuses_indices_outside_the_output():
    pooled, indices = nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2, return_indices=True)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        MaxUnpool2d(2)(pooled, indices, output_size=(2, 2))


@pytest.mark.parametrize("module, setting", [
    (nn.Conv2d(4, 4, 3, dilation=2), "dilation=(2, 2)"), (nn.Conv2d(4, 4, 3, groups=2), "groups=2"),
    (nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), "padding_mode='reflect'"),
    (nn.Conv2d(4, 4, 3, padding="same"), "padding='same'"),
    (nn.ConvTranspose2d(4, 4, 3, dilation=2), "dilation=(2, 2)"), (nn.ConvTranspose2d(4, 4, 3, groups=4), "groups=4"),
    (nn.MaxPool2d(3, ceil_mode=True), "ceil_mode=True"), (nn.MaxPool2d(3, dilation=2), "dilation=2"),
])
def test_settings_it_does_not_implement_are_refused_by_name(module, setting):
    scratch = {nn.Conv2d: Conv2d, nn.ConvTranspose2d: ConvTranspose2d, nn.MaxPool2d: MaxPool2d}[type(module)]
    with pytest.raises(ConfigError, match=rf"^modules=scratch: {type(module).__name__}\({re.escape(setting)}\) is not "
                                          rf"implemented by pipeline\.scratch\.\w+\.{scratch.__name__}; supported: "):
        scratch.like(module)


@pytest.mark.parametrize("reference", [nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(3, 8, (5, 3), bias=False),
                                       nn.ConvTranspose2d(8, 3, 4, 2, 1, 1), nn.ConvTranspose2d(8, 3, 2, bias=False)],
                         ids=["conv", "conv_no_bias", "transposed", "transposed_no_bias"])
def test_parameters_state_dicts_and_initialisation_are_torchs(reference):
    scratch = type(reference).__name__
    module = {"Conv2d": Conv2d, "ConvTranspose2d": ConvTranspose2d}[scratch].like(reference)
    ours, theirs = module.state_dict(), reference.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    reference.load_state_dict(ours)  # and back
    fan_in = module.weight[0].numel()  # torch's fan_in: dimension 1 (C_out for a transposed kernel) times k·k
    for name, value in ours.items():  # uniform in ±1/√fan_in, as torch draws them
        assert value.abs().max() <= fan_in ** -0.5, name
    assert module.weight.abs().max() > 0.5 * fan_in ** -0.5  # (the weight has ≥ 96 draws: never all small)
    assert repr(module).startswith(scratch) and "kernel_size" in repr(module)
