"""Gated recurrent unit (lab 7), backpropagation through time written out.

Forward, for t = 1 … T (W's rows are r, z, n in that order, as torch's; x_r = W_ir x_t + b_ir, h_r = W_hr h_{t-1}
+ b_hr, and likewise for z and n):
    r_t = σ(x_r + h_r),   z_t = σ(x_z + h_z),   n_t = tanh(x_n + r_t ⊙ h_n)
    h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1},   output_t = h_t
Backward, for t = T … 1, carrying δ = ∂L/∂h_t (starting from ∂L/∂h_T given for the final state):
    δ ← δ + ∂L/∂output_t
    ∂L/∂a_n = δ ⊙ (1 - z_t) ⊙ (1 - n_t²)                  (a_n = x_n + r_t ⊙ h_n)
    ∂L/∂a_r = ∂L/∂a_n ⊙ h_n ⊙ r_t(1 - r_t)      ∂L/∂a_z = δ ⊙ (h_{t-1} - n_t) ⊙ z_t(1 - z_t)
    input side  ∂L/∂(x_r, x_z, x_n) = (∂L/∂a_r, ∂L/∂a_z, ∂L/∂a_n)
    hidden side ∂L/∂(h_r, h_z, h_n) = (∂L/∂a_r, ∂L/∂a_z, ∂L/∂a_n ⊙ r_t)
    δ ← ∂L/∂(h_r, h_z, h_n) W_hh + δ ⊙ z_t      (= ∂L/∂h_{t-1}; after the loop it is ∂L/∂h_0)
    then the weights and x as in pipeline.scratch.recurrent, each side with its own gradients.
Variable lengths: where a sequence has ended, h_t = h_{t-1}, output_t = 0, and δ passes to h_{t-1} unchanged.
"""
import torch
from torch import nn

from pipeline.scratch.recurrent import (Recurrent, hidden_side_grads, input_projection, input_side_grads, keep_ended,
                                        masked_output, output_grad, split_by_mask, step_masks)


class GRUFunction(torch.autograd.Function):
    """One layer, one direction: (x, mask, h0, W_ih, W_hh, b_ih, b_hh) → (output, h_T)."""

    @staticmethod
    def forward(ctx, x, mask, h0, weight_ih, weight_hh, bias_ih, bias_hh):
        ctx.set_materialize_grads(False)  # an unused output (the classifier reads only h_T) costs nothing
        steps, (batch, size) = x.shape[1], h0.shape
        projected = input_projection(x, weight_ih, bias_ih)  # x_r, x_z, x_n of every step
        states = x.new_empty(steps + 1, batch, size)  # states[t] = h_t, states[0] = h0
        states[0] = h0
        hidden_parts = x.new_empty(steps, batch, 3 * size)  # h_r, h_z, h_n of every step (h_n is needed back)
        gates = x.new_empty(steps, batch, 3 * size)  # r, z, n of every step
        reset_update, new = slice(0, 2 * size), slice(2 * size, 3 * size)
        weight_hh_t = weight_hh.t()
        for t, running in enumerate(step_masks(mask, steps, x.dtype)):
            hidden = hidden_parts[t]
            if bias_hh is None:
                torch.mm(states[t], weight_hh_t, out=hidden)
            else:
                torch.addmm(bias_hh, states[t], weight_hh_t, out=hidden)
            active = gates[t]
            torch.sigmoid(projected[t, :, reset_update] + hidden[:, reset_update], out=active[:, reset_update])
            r, z = active[:, :size], active[:, size : 2 * size]
            n = torch.tanh(torch.addcmul(projected[t, :, new], r, hidden[:, new]), out=active[:, new])
            h = states[t + 1]
            torch.addcmul(n, z, states[t] - n, out=h)  # (1 - z) n + z h
            keep_ended(h, states[t], running)
        ctx.save_for_backward(x, mask, weight_ih, weight_hh, states, hidden_parts, gates)
        ctx.has_bias = bias_ih is not None
        return masked_output(states, mask), states[-1].clone()

    @staticmethod
    def backward(ctx, grad_output, grad_final):
        x, mask, weight_ih, weight_hh, states, hidden_parts, gates = ctx.saved_tensors
        steps, batch, size = states.shape[0] - 1, states.shape[1], states.shape[2]
        r, z, n = gates.chunk(3, dim=2)
        hidden_n = hidden_parts[..., 2 * size :]
        # What does not depend on δ, for all steps at once: ∂h_t/∂ of each pre-activation, input and hidden side.
        to_n = (1 - z) * (1 - n * n)
        to_r = to_n * hidden_n * r * (1 - r)
        to_z = (states[:-1] - n) * z * (1 - z)
        to_input = torch.stack([to_r, to_z, to_n], dim=2)
        to_hidden = torch.stack([to_r, to_z, to_n * r], dim=2)
        grad_outputs = output_grad(grad_output, mask)
        grad_input_pre = x.new_empty(steps, batch, 3, size)  # ∂L/∂(x_r, x_z, x_n) of every step
        grad_hidden_pre = x.new_empty(steps, batch, 3, size)  # ∂L/∂(h_r, h_z, h_n) of every step
        grad_h = grad_final if grad_final is not None else states.new_zeros(batch, size)
        running_masks = step_masks(mask, steps, x.dtype)
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad_h = grad_h + grad_outputs[t]
            to_step, passed_back = split_by_mask(grad_h, running_masks[t])
            torch.mul(to_input[t], to_step.unsqueeze(1), out=grad_input_pre[t])
            torch.mul(to_hidden[t], to_step.unsqueeze(1), out=grad_hidden_pre[t])
            grad_h = torch.addmm(to_step * z[t], grad_hidden_pre[t].view(batch, 3 * size), weight_hh)
            if passed_back is not None:
                grad_h += passed_back
        needs = ctx.needs_input_grad
        grad_x, grad_weight_ih, grad_bias_ih = input_side_grads(
            (needs[0], needs[3], needs[5]), grad_input_pre.view(steps, batch, 3 * size), x, weight_ih, ctx.has_bias)
        grad_weight_hh, grad_bias_hh = hidden_side_grads(
            (needs[4], needs[6]), grad_hidden_pre.view(steps, batch, 3 * size), states, ctx.has_bias)
        return grad_x, None, grad_h if needs[2] else None, grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh


class GRU(Recurrent):
    """torch.nn.GRU from scratch: stacked, optionally bidirectional, padded or packed input."""

    gates = 3
    torch_class = nn.GRU

    def run_direction(self, x, mask, states, weights):
        output, final = GRUFunction.apply(x, mask, *states, *weights)
        return output, (final,)
