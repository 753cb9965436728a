"""What RNN, LSTM and GRU share (lab 7): stacking layers, the reverse direction, variable lengths, PackedSequence,
and the bookkeeping of backpropagation through time that does not depend on the cell.

Each cell's file holds a torch.autograd.Function for ONE layer in ONE direction over a whole (batch, time, features)
sequence. Its inputs are the sequence x, a (batch, time) mask of the real steps (None: every step is real), the initial
state and the weights; a sequence whose length ≤ t keeps its state at step t and outputs 0 there, so the final state
is the state after its last real token. Inside, time comes first: step t is the contiguous slice [t].

Shared by the three backward passes: every step's input projection x_t W_ihᵀ is one matmul before the loop, so the
input side of the gradient is one matmul after it. With ∂L/∂a_t the gradient of step t's pre-activations (gates):
    ∂L/∂x_t = ∂L/∂a_t W_ih,   ∂L/∂W_ih = Σ_t ∂L/∂a_tᵀ x_t,   ∂L/∂b_ih = Σ_t ∂L/∂a_t
    ∂L/∂W_hh = Σ_t ∂L/∂a_tᵀ h_{t-1},   ∂L/∂b_hh = Σ_t ∂L/∂a_t   (the GRU's hidden side differs only in its n rows)
and a step a sequence has already finished passes its state gradient straight through to the step before.
"""
import math

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from pipeline.errors import ConfigError
from pipeline.scratch.dropout import dropout

# ---- helpers of the autograd Functions (time-major inside: tensors are (time, batch, ...)) ----


def step_masks(mask: torch.Tensor | None, steps: int, dtype: torch.dtype) -> list:
    """Per step, a (batch, 1) tensor of 1 for the sequences still running and 0 for those that have ended, or None
    when all are running (nothing to mask). Numbers, not booleans: blending by them is cheaper than torch.where."""
    if mask is None:
        return [None] * steps
    running = mask.t().unsqueeze(-1).to(dtype)
    all_running = mask.all(dim=0).tolist()  # one device sync, not one per step
    return [None if all_running[t] else running[t] for t in range(steps)]


def keep_ended(new: torch.Tensor, previous: torch.Tensor, running: torch.Tensor | None) -> None:
    """In place: the rows of `new` whose sequence has ended take back their `previous` state (exact for 0/1)."""
    if running is not None:
        torch.lerp(previous, new, running, out=new)


def input_projection(x: torch.Tensor, weight_ih: torch.Tensor, *biases) -> torch.Tensor:
    """x_t W_ihᵀ + biases for every step at once: (batch, time, in) → (time, batch, rows)."""
    projection = x.transpose(0, 1) @ weight_ih.t()
    for bias in biases:
        if bias is not None:
            projection += bias
    return projection


def masked_output(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The outputs from the (time+1, batch, hidden) states: the state after each step, 0 where the sequence ended."""
    after_each_step = states[1:].transpose(0, 1)
    if mask is None:
        return after_each_step.clone()
    return after_each_step * mask.unsqueeze(-1).to(states.dtype)


def output_grad(grad_output: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """∂L/∂output as (time, batch, hidden), 0 at the padded steps (their outputs are constant 0)."""
    if grad_output is None:
        return None
    if mask is not None:
        grad_output = grad_output * mask.unsqueeze(-1).to(grad_output.dtype)
    return grad_output.transpose(0, 1)


def split_by_mask(grad_state: torch.Tensor, running: torch.Tensor | None):
    """∂L/∂(state after step t) → (the part that reaches this step's new state, the part passed straight back)."""
    if running is None:
        return grad_state, None
    to_step = grad_state * running
    return to_step, grad_state - to_step


def input_side_grads(needs, grad_gates, x, weight_ih, has_bias: bool):
    """(∂L/∂x, ∂L/∂W_ih, ∂L/∂b_ih) from the (time, batch, rows) pre-activation gradients, each one matmul or sum."""
    grad_x = grad_weight = grad_bias = None
    if needs[0]:
        grad_x = (grad_gates @ weight_ih).transpose(0, 1)
    if needs[1]:
        rows = grad_gates.shape[-1]
        grad_weight = grad_gates.reshape(-1, rows).t() @ x.transpose(0, 1).reshape(-1, x.shape[-1])
    if has_bias and needs[2]:
        grad_bias = grad_gates.sum(dim=(0, 1))
    return grad_x, grad_weight, grad_bias


def hidden_side_grads(needs, grad_gates, states, has_bias: bool):
    """(∂L/∂W_hh, ∂L/∂b_hh): Σ_t ∂L/∂a_tᵀ h_{t-1} in one matmul over the (time+1, batch, hidden) states."""
    grad_weight = grad_bias = None
    if needs[0]:
        grad_weight = grad_gates.reshape(-1, grad_gates.shape[-1]).t() @ states[:-1].reshape(-1, states.shape[-1])
    if has_bias and needs[1]:
        grad_bias = grad_gates.sum(dim=(0, 1))
    return grad_weight, grad_bias


# ---- the multi-layer module ----


def reverse_within_lengths(sequence: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """Each (batch, time, features) row's first `length` steps in reverse order, padding left in place; its own
    inverse. `index` is (batch, time): the step to read at each position (None: every row is full length)."""
    if index is None:
        return sequence.flip(1)
    return sequence.gather(1, index.unsqueeze(-1).expand_as(sequence))


class Recurrent(nn.Module):
    """Stacked, optionally bidirectional recurrent layers, with torch.nn.RNN/LSTM/GRU's arguments, parameter names,
    initialisation and call: forward(input, hx) → (output, h_n), input padded or a PackedSequence.

    A subclass names its `gates` (rows of W per hidden unit), its `torch_class`, how many state tensors it carries
    (`state_count`: 2 for the LSTM's (h, c)) and runs one layer in one direction with its Function (`run_direction`).
    """

    gates: int
    state_count = 1
    torch_class: type

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError(f"{name}: hidden_size and num_layers must be positive, got {hidden_size}, {num_layers}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be a probability in [0, 1], got {dropout}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.directions = 2 if bidirectional else 1
        self.suffixes = ["", "_reverse"][: self.directions]
        rows = self.gates * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self.suffixes:
                shapes = {"weight_ih": (rows, layer_input), "weight_hh": (rows, hidden_size)}
                if bias:
                    shapes.update(bias_ih=(rows,), bias_hh=(rows,))
                for kind, shape in shapes.items():
                    self.register_parameter(f"{kind}_l{layer}{suffix}",
                                            nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
        self.reset_parameters()

    def reset_parameters(self):
        """torch's initialisation: every weight and bias uniform in ±1/√hidden_size."""
        bound = 1 / math.sqrt(self.hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    @classmethod
    def settings_of(cls, module: nn.RNNBase) -> dict:
        weight = module.weight_ih_l0
        return dict(input_size=module.input_size, hidden_size=module.hidden_size, num_layers=module.num_layers,
                    bias=module.bias, batch_first=module.batch_first, dropout=module.dropout,
                    bidirectional=module.bidirectional, device=weight.device, dtype=weight.dtype)

    @classmethod
    def like(cls, module: nn.RNNBase) -> "Recurrent":
        ours = f"{cls.__module__}.{cls.__name__}"
        if not isinstance(module, cls.torch_class):
            raise ConfigError(f"modules=scratch: {ours} stands in for torch.nn.{cls.torch_class.__name__}, "
                              f"not {type(module).__name__}")
        if getattr(module, "proj_size", 0) > 0:
            raise ConfigError(f"modules=scratch: {cls.__name__}(proj_size={module.proj_size}) is not implemented "
                              f"by {ours}; supported: proj_size=0")
        return cls(**cls.settings_of(module))

    def run_direction(self, x, mask, states: tuple, weights: tuple) -> tuple:
        """One layer, one direction: (batch, time, in) → ((batch, time, hidden) output, tuple of final states)."""
        raise NotImplementedError

    def layer_weights(self, layer: int, suffix: str) -> tuple:
        """(W_ih, W_hh, b_ih, b_hh) of one layer and direction; the biases are None when bias=False."""
        return tuple(getattr(self, f"{kind}_l{layer}{suffix}") if self.bias or kind.startswith("weight") else None
                     for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def forward(self, input, hx=None):
        packed = input if isinstance(input, PackedSequence) else None
        unbatched = False
        if packed is not None:
            x, lengths = pad_packed_sequence(packed, batch_first=True)  # rows back in the original batch order
        else:
            if input.dim() not in (2, 3):
                raise ValueError(f"{type(self).__name__}: expected a 3-D (or unbatched 2-D) input, "
                                 f"got shape {tuple(input.shape)}")
            unbatched = input.dim() == 2
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            x = x if self.batch_first else x.transpose(0, 1)
            lengths = None
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[-1]} features, expected input_size="
                             f"{self.input_size}")
        batch, steps = x.shape[:2]
        initial = self.initial_states(hx, batch, x, unbatched)

        mask = reverse_index = None
        if lengths is not None:
            lengths = lengths.to(x.device).unsqueeze(1)
            positions = torch.arange(steps, device=x.device)
            mask = positions < lengths
            reverse_index = torch.where(mask, lengths - 1 - positions, positions)

        # The cells run in the weights' dtype even under autocast (bf16-mixed): their step loops write into
        # preallocated buffers, which autocast does not cast (torch.amp.custom_fwd(cast_inputs=...) does the same).
        dtype = self.weight_ih_l0.dtype
        x, initial = x.to(dtype), tuple(state.to(dtype) for state in initial)
        with torch.autocast(x.device.type, enabled=False):
            finals = []
            for layer in range(self.num_layers):
                outputs = []
                for direction, suffix in enumerate(self.suffixes):
                    start = tuple(state[layer * self.directions + direction] for state in initial)
                    weights = self.layer_weights(layer, suffix)
                    if direction == 0:
                        output, final = self.run_direction(x, mask, start, weights)
                    else:
                        backwards = reverse_within_lengths(x, reverse_index)
                        output, final = self.run_direction(backwards, mask, start, weights)
                        output = reverse_within_lengths(output, reverse_index)
                    outputs.append(output)
                    finals.append(final)
                x = torch.cat(outputs, dim=2) if self.directions == 2 else outputs[0]
                if layer < self.num_layers - 1:  # between stacked layers only, as torch does
                    x = dropout(x, self.dropout, self.training)

        final_states = tuple(torch.stack([final[k] for final in finals]) for k in range(self.state_count))
        if packed is not None:
            output = repack(x, lengths.squeeze(1).cpu(), packed)
        else:
            output = x if self.batch_first else x.transpose(0, 1)
            if unbatched:
                output = output.squeeze(0 if self.batch_first else 1)
                final_states = tuple(state.squeeze(1) for state in final_states)
        return output, (final_states[0] if self.state_count == 1 else final_states)

    def initial_states(self, hx, batch: int, x: torch.Tensor, unbatched: bool) -> tuple:
        """hx as a tuple of (layers·directions, batch, hidden) tensors; zeros when not given."""
        shape = (self.num_layers * self.directions, batch, self.hidden_size)
        if hx is None:
            return tuple(x.new_zeros(shape) for _ in range(self.state_count))
        states = tuple(hx) if self.state_count > 1 else (hx,)
        if len(states) != self.state_count:
            raise ValueError(f"{type(self).__name__}: hx must be {self.state_count} tensors, got {len(states)}")
        if unbatched:
            states = tuple(state.unsqueeze(1) for state in states)
        for state in states:
            if tuple(state.shape) != shape:
                raise ValueError(f"{type(self).__name__}: hx must have shape {shape} "
                                 f"(layers·directions, batch, hidden), got {tuple(state.shape)}")
        return states

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        defaults = dict(num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False)
        return text + "".join(f", {key}={getattr(self, key)}" for key, plain in defaults.items()
                              if getattr(self, key) != plain)


def repack(output: torch.Tensor, lengths: torch.Tensor, like: PackedSequence) -> PackedSequence:
    """The (batch, time, features) output, rows in the original order, packed exactly as the input was (same batch
    sizes and sort order), as torch returns it."""
    if like.sorted_indices is not None:
        output = output.index_select(0, like.sorted_indices)
        lengths = lengths.index_select(0, like.sorted_indices.cpu())
    data = pack_padded_sequence(output, lengths, batch_first=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)
