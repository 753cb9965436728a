"""Vanilla (Elman) RNN (lab 7), backpropagation through time written out.

Forward, for t = 1 … T (φ = tanh or relu):
    a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   h_t = φ(a_t),   output_t = h_t
Backward, for t = T … 1, carrying δ = ∂L/∂h_t (starting from ∂L/∂h_T given for the final state):
    δ ← δ + ∂L/∂output_t
    ∂L/∂a_t = δ ⊙ φ'(a_t)          φ' = 1 - h_t² for tanh,  [h_t > 0] for relu
    δ ← ∂L/∂a_t W_hh               (= ∂L/∂h_{t-1}; after the loop it is ∂L/∂h_0)
    then the weights and x as in pipeline.scratch.recurrent: ∂L/∂W_hh = Σ_t ∂L/∂a_tᵀ h_{t-1}, …
Variable lengths: where a sequence has ended, h_t = h_{t-1}, output_t = 0, and δ passes to h_{t-1} unchanged.
"""
import torch
from torch import nn

from pipeline.scratch.recurrent import (Recurrent, hidden_side_grads, input_projection, input_side_grads, keep_ended,
                                        masked_output, output_grad, split_by_mask, step_masks)

ACTIVATIONS = {"tanh": torch.tanh_, "relu": torch.relu_}  # in place: each step writes straight into its state


class RNNFunction(torch.autograd.Function):
    """One layer, one direction: (x, mask, h0, W_ih, W_hh, b_ih, b_hh, nonlinearity) → (output, h_T)."""

    @staticmethod
    def forward(ctx, x, mask, h0, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity: str):
        ctx.set_materialize_grads(False)  # an unused output (the classifier reads only h_T) costs nothing
        activation_in_place = ACTIVATIONS[nonlinearity]
        steps = x.shape[1]
        projected = input_projection(x, weight_ih, bias_ih, bias_hh)
        states = x.new_empty(steps + 1, *h0.shape)  # states[t] = h_t, states[0] = h0
        states[0] = h0
        weight_hh_t = weight_hh.t()
        for t, running in enumerate(step_masks(mask, steps, x.dtype)):
            new = states[t + 1]
            activation_in_place(torch.addmm(projected[t], states[t], weight_hh_t, out=new))
            keep_ended(new, states[t], running)
        ctx.save_for_backward(x, mask, weight_ih, weight_hh, states)
        ctx.nonlinearity, ctx.has_bias = nonlinearity, bias_ih is not None
        return masked_output(states, mask), states[-1].clone()

    @staticmethod
    def backward(ctx, grad_output, grad_final):
        x, mask, weight_ih, weight_hh, states = ctx.saved_tensors
        steps = x.shape[1]
        after = states[1:]  # where a step ran, the state after it is φ(a_t)
        slope = 1 - after * after if ctx.nonlinearity == "tanh" else (after > 0).to(after.dtype)
        grad_outputs = output_grad(grad_output, mask)
        grad_pre = torch.empty_like(after)  # ∂L/∂a_t for every step
        grad_h = grad_final if grad_final is not None else states.new_zeros(states.shape[1:])
        running_masks = step_masks(mask, steps, x.dtype)
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad_h = grad_h + grad_outputs[t]
            to_step, passed_back = split_by_mask(grad_h, running_masks[t])
            torch.mul(to_step, slope[t], out=grad_pre[t])
            grad_h = grad_pre[t] @ weight_hh
            if passed_back is not None:
                grad_h = grad_h + passed_back
        needs = ctx.needs_input_grad
        grad_x, grad_weight_ih, grad_bias_ih = input_side_grads((needs[0], needs[3], needs[5]), grad_pre, x,
                                                                weight_ih, ctx.has_bias)
        grad_weight_hh, grad_bias_hh = hidden_side_grads((needs[4], needs[6]), grad_pre, states, ctx.has_bias)
        grad_h0 = grad_h if needs[2] else None
        return grad_x, None, grad_h0, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh, None


class RNN(Recurrent):
    """torch.nn.RNN from scratch: h_t = tanh or relu(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), stacked, optionally
    bidirectional, padded or packed input."""

    gates = 1
    torch_class = nn.RNN

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device=None, dtype=None):
        if nonlinearity not in ACTIVATIONS:
            raise ValueError(f"RNN: nonlinearity={nonlinearity!r} is not one of {', '.join(ACTIVATIONS)}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    @classmethod
    def settings_of(cls, module: nn.RNN) -> dict:
        return {**super().settings_of(module), "nonlinearity": module.nonlinearity}

    def run_direction(self, x, mask, states, weights):
        output, final = RNNFunction.apply(x, mask, *states, *weights, self.nonlinearity)
        return output, (final,)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonlinearity == "tanh" else f"{text}, nonlinearity={self.nonlinearity}"
