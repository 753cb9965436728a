"""The scratch RNN, LSTM and GRU: their hand-written BPTT passes gradcheck, and the modules give what torch.nn's give
with the same weights (outputs, final states, gradients of the input, the initial state and every parameter) for
stacked, bidirectional, batch-first, bias-free and packed (unsorted lengths) inputs, inside the char-RNN classifier too;
dropout acts only between layers while training; what is not implemented is refused."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from pipeline.data.vocabulary import PAD
from pipeline.errors import ConfigError
from pipeline.models.recurrent import RecurrentClassifier
from pipeline.scratch.gru import GRU, GRUFunction
from pipeline.scratch.lstm import LSTM, LSTMFunction
from pipeline.scratch.rnn import RNN, RNNFunction

# name: (torch class, scratch class, extra keyword arguments, Function, its trailing non-tensor arguments)
CELLS = {
    "rnn_tanh": (nn.RNN, RNN, {}, RNNFunction, ("tanh",)),
    "rnn_relu": (nn.RNN, RNN, {"nonlinearity": "relu"}, RNNFunction, ("relu",)),
    "lstm": (nn.LSTM, LSTM, {}, LSTMFunction, ()),
    "gru": (nn.GRU, GRU, {}, GRUFunction, ()),
}
TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / max(1.0, reference.abs().max().item())).item()


def function_inputs(cell: str, bias: bool = True):
    """Batch 3, time 4, 3 features, hidden 2, lengths 4, 2, 3; every tensor but the mask in float64 with grad."""
    torch.manual_seed(0)
    _, module_class, _, _, _ = CELLS[cell]
    rows = module_class.gates * 2
    mask = torch.arange(4) < torch.tensor([[4], [2], [3]])
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    states = [torch.randn(3, 2, dtype=torch.float64) for _ in range(module_class.state_count)]
    weights = [torch.randn(rows, 3, dtype=torch.float64), torch.randn(rows, 2, dtype=torch.float64)]
    biases = [torch.randn(rows, dtype=torch.float64), torch.randn(rows, dtype=torch.float64)] if bias else [None, None]
    tensors = [t.requires_grad_() for t in (x, *states, *weights, *[b for b in biases if b is not None])]
    return mask, tensors


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("cell", CELLS)
def test_the_function_passes_gradcheck_with_unequal_lengths(cell, bias):
    function, extra = CELLS[cell][3], CELLS[cell][4]
    mask, tensors = function_inputs(cell, bias)

    def run(*tensors):
        leading = 1 + CELLS[cell][1].state_count + 2  # x, the states, W_ih, W_hh
        biases = tensors[leading:] if bias else (None, None)
        return function.apply(tensors[0], mask, *tensors[1:leading], *biases, *extra)

    assert torch.autograd.gradcheck(run, tensors)


@pytest.mark.parametrize("cell", CELLS)
def test_a_finished_sequence_keeps_its_state_and_outputs_zero(cell):
    function, extra = CELLS[cell][3], CELLS[cell][4]
    mask, (x, *rest) = function_inputs(cell)
    states = len(rest) - 4
    with torch.no_grad():
        output, *finals = function.apply(x, mask, *rest[:states], *rest[states:], *extra)
        # row 1 has length 2: the same as running its first two steps alone
        alone, *alone_finals = function.apply(x[1:2, :2], None, *[s[1:2] for s in rest[:states]],
                                              *rest[states:], *extra)
    assert torch.equal(output[1, 2:], torch.zeros_like(output[1, 2:]))
    assert torch.allclose(output[1:2, :2], alone)
    for final, alone_final in zip(finals, alone_finals):
        assert torch.allclose(final[1:2], alone_final)


def pair(cell: str, dtype, **settings):
    """A torch.nn module with random weights and the scratch module built from it, as modules=scratch builds it."""
    torch_class, scratch_class, extra, _, _ = CELLS[cell]
    torch.manual_seed(1)
    reference = torch_class(3, 5, **extra, **settings).to(dtype)
    ours = scratch_class.like(reference)
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def run_and_differentiate(module, x, hx, packed_lengths=None):
    """Output, final states and the gradients of x, hx and every parameter, under a loss touching all outputs."""
    x = x.detach().clone().requires_grad_()
    hx = None if hx is None else tuple(h.detach().clone().requires_grad_() for h in hx)
    module.zero_grad()
    batch_first = module.batch_first
    inputs = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths, batch_first=batch_first,
                                                                    enforce_sorted=False)
    output, final = module(inputs, None if hx is None else (hx if len(hx) == 2 else hx[0]))
    finals = final if isinstance(final, tuple) else (final,)
    output_values = output.data if isinstance(output, PackedSequence) else output
    loss = output_values.sin().sum() + sum((state * state).sum() for state in finals)
    loss.backward()
    results = {"output": output_values, **{f"final_{k}": s for k, s in enumerate(finals)}, "grad_x": x.grad}
    results.update({f"grad_hx_{k}": h.grad for k, h in enumerate(hx or ())})
    results.update({f"grad_{name}": p.grad for name, p in module.named_parameters()})
    return output, results


SETTINGS = {  # name: (module settings, lengths to pack with or None for a padded input, whether hx is given)
    "two_layers_bidirectional_time_major_hx": (dict(num_layers=2, bidirectional=True), None, True),
    "batch_first_no_bias": (dict(batch_first=True, bias=False), None, False),
    "packed_unsorted_two_layers_bidirectional": (dict(num_layers=2, bidirectional=True, batch_first=True),
                                                 torch.tensor([3, 6, 1, 4]), True),
    "packed_unsorted_time_major": (dict(num_layers=2), torch.tensor([2, 6, 6, 5]), False),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("cell", CELLS)
def test_the_module_matches_torch_outputs_and_every_gradient(cell, setting, dtype):
    settings, lengths, give_hx = SETTINGS[setting]
    reference, ours = pair(cell, dtype, **settings)
    torch.manual_seed(2)
    batch, steps = 4, 6
    x = torch.randn(*((batch, steps) if reference.batch_first else (steps, batch)), 3, dtype=dtype)
    layers_directions = reference.num_layers * (2 if reference.bidirectional else 1)
    hx = tuple(torch.randn(layers_directions, batch, 5, dtype=dtype) for _ in range(ours.state_count))
    hx = hx if give_hx else None

    reference_output, expected = run_and_differentiate(reference, x, hx, lengths)
    our_output, got = run_and_differentiate(ours, x, hx, lengths)

    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key].shape == expected[key].shape, key
        assert relative_error(got[key], expected[key]) < TOLERANCE[dtype], key
    if lengths is not None:  # packed the same way: same batch sizes and order
        assert torch.equal(our_output.batch_sizes, reference_output.batch_sizes)
        assert torch.equal(our_output.sorted_indices, reference_output.sorted_indices)
        assert torch.equal(our_output.unsorted_indices, reference_output.unsorted_indices)


@pytest.mark.parametrize("cell", CELLS)
def test_an_unbatched_sequence_matches_torch(cell):
    reference, ours = pair(cell, torch.float64, bidirectional=True)
    x = torch.randn(6, 3, dtype=torch.float64)
    (expected_output, expected_final), (our_output, our_final) = reference(x), ours(x)
    assert our_output.shape == expected_output.shape
    assert relative_error(our_output, expected_output) < 1e-6
    for got, expected in zip(our_final if isinstance(our_final, tuple) else (our_final,),
                             expected_final if isinstance(expected_final, tuple) else (expected_final,)):
        assert got.shape == expected.shape and relative_error(got, expected) < 1e-6


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_the_char_rnn_classifier_gives_the_same_logits_and_grads_with_the_scratch_cell(cell):
    torch.manual_seed(3)
    reference = RecurrentClassifier([9], num_classes=4, vocab_size=12, cell=cell, embedding_dim=6, hidden_size=7,
                                    num_layers=2, bidirectional=True).double()
    ours = copy.deepcopy(reference)
    scratch_class = {"rnn": RNN, "lstm": LSTM, "gru": GRU}[cell]
    ours.rnn = scratch_class.like(reference.rnn)
    ours.rnn.load_state_dict(reference.rnn.state_dict())
    lengths = torch.tensor([9, 3, 1, 6, 3])
    tokens = torch.randint(2, 12, (5, 9))
    tokens[torch.arange(9) >= lengths[:, None]] = PAD
    labels = torch.tensor([0, 3, 1, 2, 3])

    gradients = []
    for model in (reference, ours):
        logits = model(tokens)
        nn.functional.cross_entropy(logits, labels).backward()
        gradients.append((logits, {name: p.grad for name, p in model.named_parameters()}))
    (expected_logits, expected_grads), (our_logits, our_grads) = gradients
    assert relative_error(our_logits, expected_logits) < 1e-6
    assert our_grads.keys() == expected_grads.keys()
    for name in expected_grads:
        assert relative_error(our_grads[name], expected_grads[name]) < 1e-6, name


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_acts_between_layers_only_and_only_while_training(cell):
    reference, ours = pair(cell, torch.float64, num_layers=2, dropout=1.0, batch_first=True)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    ours.train()
    _, trained_final = ours(x)
    trained_final = trained_final if isinstance(trained_final, tuple) else (trained_final,)
    # Dropping everything between the layers, the second layer reads zeros; its own output is not dropped.
    second_layer = CELLS[cell][0](5, 5, batch_first=True, **CELLS[cell][2]).double()
    second_layer.load_state_dict({name.replace("l1", "l0"): value for name, value in ours.state_dict().items()
                                  if "l1" in name})
    zeros_output, zeros_final = second_layer(torch.zeros(2, 5, 5, dtype=torch.float64))
    trained_output, _ = ours(x)
    assert relative_error(trained_output, zeros_output) < 1e-12
    assert trained_output.abs().max() > 0
    zeros_final = zeros_final if isinstance(zeros_final, tuple) else (zeros_final,)
    for state, expected in zip(trained_final, zeros_final):
        assert relative_error(state[1], expected[0]) < 1e-12

    # In evaluation nothing is dropped: the same as torch's (which also drops nothing in evaluation).
    ours.eval(), reference.eval()
    (our_output, _), (expected_output, _) = ours(x), reference(x)
    assert relative_error(our_output, expected_output) < 1e-6


@pytest.mark.parametrize("cell", CELLS)
def test_parameters_are_named_shaped_and_initialised_as_torchs(cell):
    reference, ours = pair(cell, torch.float32, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True)
    fresh = type(ours)(3, 5, num_layers=2, bidirectional=True, dropout=0.5, batch_first=True, **CELLS[cell][2])
    assert [(k, v.shape) for k, v in fresh.state_dict().items()] == \
           [(k, v.shape) for k, v in reference.state_dict().items()]
    assert all(p.abs().max() <= 5 ** -0.5 for p in fresh.parameters())
    reference.load_state_dict(fresh.state_dict())  # loads the other way too
    # torch's repr leaves the nonlinearity out; ours names it when it is not the default tanh
    assert ours.extra_repr().replace(", nonlinearity=relu", "") == reference.extra_repr()


def test_what_is_not_implemented_or_wrong_is_refused():
    with pytest.raises(ConfigError, match=r"LSTM\(proj_size=2\) is not implemented .* supported: proj_size=0"):
        LSTM.like(nn.LSTM(3, 5, proj_size=2))
    with pytest.raises(ConfigError, match="stands in for torch.nn.GRU, not LSTM"):
        GRU.like(nn.LSTM(3, 5))
    with pytest.raises(ValueError, match="nonlinearity='sigmoid' is not one of tanh, relu"):
        RNN(3, 5, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match=r"hx must have shape \(2, 4, 5\)"):
        GRU(3, 5, bidirectional=True)(torch.randn(6, 4, 3), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="input has 2 features, expected input_size=3"):
        RNN(3, 5)(torch.randn(6, 4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("cell", CELLS)
def test_the_module_matches_torch_on_cuda(cell):
    reference, ours = pair(cell, torch.float32, num_layers=2, bidirectional=True, batch_first=True)
    reference, ours = reference.cuda(), ours.cuda()
    x = torch.randn(4, 6, 3, device="cuda")
    lengths = torch.tensor([3, 6, 1, 4])
    _, expected = run_and_differentiate(reference, x, None, lengths)
    _, got = run_and_differentiate(ours, x, None, lengths)
    for key in expected:
        assert relative_error(got[key], expected[key]) < 1e-4, key
