"""Long short-term memory (lab 7), backpropagation through time written out.

Forward, for t = 1 … T (σ the logistic sigmoid; W's rows are the gates i, f, g, o in that order, as torch's):
    i_t = σ(a_i),  f_t = σ(a_f),  g_t = tanh(a_g),  o_t = σ(a_o)      where a = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t,   h_t = o_t ⊙ tanh(c_t),   output_t = h_t
Backward, for t = T … 1, carrying δh = ∂L/∂h_t and δc = ∂L/∂c_t (from ∂L/∂h_T, ∂L/∂c_T of the final state):
    δh ← δh + ∂L/∂output_t
    δc ← δc + δh ⊙ o_t ⊙ (1 - tanh²(c_t))                 (c_t reaches L through c_{t+1} and through h_t)
    ∂L/∂a_i = δc ⊙ g_t ⊙ i_t(1 - i_t)         ∂L/∂a_f = δc ⊙ c_{t-1} ⊙ f_t(1 - f_t)
    ∂L/∂a_g = δc ⊙ i_t ⊙ (1 - g_t²)            ∂L/∂a_o = δh ⊙ tanh(c_t) ⊙ o_t(1 - o_t)
    δh ← ∂L/∂a W_hh,   δc ← δc ⊙ f_t            (= ∂L/∂h_{t-1}, ∂L/∂c_{t-1}; after the loop ∂L/∂h_0, ∂L/∂c_0)
    then the weights and x as in pipeline.scratch.recurrent: ∂L/∂W_hh = Σ_t ∂L/∂a_tᵀ h_{t-1}, …
Variable lengths: where a sequence has ended, (h_t, c_t) = (h_{t-1}, c_{t-1}), output_t = 0, and δh, δc pass
to step t-1 unchanged.
"""
import torch
from torch import nn

from pipeline.scratch.recurrent import (Recurrent, hidden_side_grads, input_projection, input_side_grads, keep_ended,
                                        masked_output, output_grad, split_by_mask, step_masks)


class LSTMFunction(torch.autograd.Function):
    """One layer, one direction: (x, mask, h0, c0, W_ih, W_hh, b_ih, b_hh) → (output, h_T, c_T)."""

    @staticmethod
    def forward(ctx, x, mask, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh):
        ctx.set_materialize_grads(False)  # an unused output (the classifier reads only h_T) costs nothing
        steps, (batch, size) = x.shape[1], h0.shape
        projected = input_projection(x, weight_ih, bias_ih, bias_hh)
        hs, cs = x.new_empty(steps + 1, batch, size), x.new_empty(steps + 1, batch, size)  # [t] = state after t
        hs[0], cs[0] = h0, c0
        gates = x.new_empty(steps, batch, 4 * size)  # i, f, g, o of every step, after their activations
        cell_rows = slice(2 * size, 3 * size)
        weight_hh_t = weight_hh.t()
        for t, running in enumerate(step_masks(mask, steps, x.dtype)):
            pre = torch.addmm(projected[t], hs[t], weight_hh_t)
            active = gates[t]
            torch.sigmoid(pre, out=active)
            torch.tanh(pre[:, cell_rows], out=active[:, cell_rows])
            i, f, g, o = active.chunk(4, dim=1)
            c, h = cs[t + 1], hs[t + 1]
            torch.addcmul(f * cs[t], i, g, out=c)
            torch.mul(o, torch.tanh(c), out=h)
            keep_ended(c, cs[t], running)
            keep_ended(h, hs[t], running)
        ctx.save_for_backward(x, mask, weight_ih, weight_hh, hs, cs, gates)
        ctx.has_bias = bias_ih is not None
        return masked_output(hs, mask), hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, grad_output, grad_h_final, grad_c_final):
        x, mask, weight_ih, weight_hh, hs, cs, gates = ctx.saved_tensors
        steps, batch, size = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
        i, f, g, o = gates.chunk(4, dim=2)
        tanh_c = torch.tanh(cs[1:])
        # What does not depend on δ, for all steps at once: ∂c_t/∂(a_i, a_f, a_g), ∂h_t/∂a_o, ∂h_t/∂c_t.
        c_to_gates = torch.stack([g * i * (1 - i), cs[:-1] * f * (1 - f), i * (1 - g * g)], dim=2)
        h_to_o = tanh_c * o * (1 - o)
        h_to_c = o * (1 - tanh_c * tanh_c)
        grad_outputs = output_grad(grad_output, mask)
        grad_pre = x.new_empty(steps, batch, 4, size)  # ∂L/∂a of every step, rows i, f, g, o
        grad_h = grad_h_final if grad_h_final is not None else hs.new_zeros(batch, size)
        grad_c = grad_c_final if grad_c_final is not None else hs.new_zeros(batch, size)
        running_masks = step_masks(mask, steps, x.dtype)
        for t in reversed(range(steps)):
            if grad_outputs is not None:
                grad_h = grad_h + grad_outputs[t]
            h_to_step, h_passed_back = split_by_mask(grad_h, running_masks[t])
            c_to_step, c_passed_back = split_by_mask(grad_c, running_masks[t])
            grad_c = torch.addcmul(c_to_step, h_to_step, h_to_c[t])  # ∂L/∂c_t, through c_{t+1} and h_t
            torch.mul(c_to_gates[t], grad_c.unsqueeze(1), out=grad_pre[t, :, :3])
            torch.mul(h_to_step, h_to_o[t], out=grad_pre[t, :, 3])
            grad_h = grad_pre[t].view(batch, 4 * size) @ weight_hh
            grad_c = grad_c * f[t]
            if h_passed_back is not None:
                grad_h += h_passed_back
                grad_c += c_passed_back
        grad_pre = grad_pre.view(steps, batch, 4 * size)
        needs = ctx.needs_input_grad
        grad_x, grad_weight_ih, grad_bias_ih = input_side_grads((needs[0], needs[4], needs[6]), grad_pre, x,
                                                                weight_ih, ctx.has_bias)
        grad_weight_hh, grad_bias_hh = hidden_side_grads((needs[5], needs[7]), grad_pre, hs, ctx.has_bias)
        return (grad_x, None, grad_h if needs[2] else None, grad_c if needs[3] else None,
                grad_weight_ih, grad_weight_hh, grad_bias_ih, grad_bias_hh)


class LSTM(Recurrent):
    """torch.nn.LSTM from scratch (without proj_size): stacked, optionally bidirectional, padded or packed input;
    forward(input, (h0, c0)) → (output, (h_n, c_n))."""

    gates = 4
    state_count = 2
    torch_class = nn.LSTM

    def run_direction(self, x, mask, states, weights):
        output, h_final, c_final = LSTMFunction.apply(x, mask, *states, *weights)
        return output, (h_final, c_final)
