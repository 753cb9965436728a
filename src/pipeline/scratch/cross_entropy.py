"""Softmax cross-entropy (lab 1, "design the loss function"), with class weights and label smoothing as
torch.nn.functional.cross_entropy has them.

Forward, per example i with scores s (C classes), true class y, class weights w (all 1 if none), smoothing ε:
    log p = s - log Σ_c e^(s_c)                        (log-softmax, shifted by max s so e^s never overflows)
    l_i = -(1 - ε) w_y log p_y - (ε / C) Σ_c w_c log p_c
    L = Σ_i l_i / Σ_i w_(y_i)                          (a weighted mean; N without weights)
Backward, with W = Σ_c w_c:
    ∂L/∂s_k = [p_k ((1 - ε) w_y + ε W / C) - (1 - ε) w_y [k = y] - ε w_k / C] / Σ_i w_(y_i)
(ε = 0, no weights: the familiar (p - onehot(y)) / N.)
"""
import torch


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, y, weight, label_smoothing: float):
        classes = scores.shape[1]
        w = weight if weight is not None else scores.new_ones(classes)
        shifted = scores - scores.max(dim=1, keepdim=True).values
        log_p = shifted - shifted.exp().sum(dim=1, keepdim=True).log()
        w_y = w[y]
        true_class = -log_p.gather(1, y[:, None]).squeeze(1)
        smoothed = -(log_p * w).sum(dim=1) / classes
        total = w_y.sum()
        ctx.save_for_backward(log_p, y, w, w_y, total)
        ctx.label_smoothing = label_smoothing
        eps = label_smoothing
        return ((1 - eps) * w_y * true_class + eps * smoothed).sum() / total

    @staticmethod
    def backward(ctx, grad_loss):
        log_p, y, w, w_y, total = ctx.saved_tensors
        eps, classes = ctx.label_smoothing, log_p.shape[1]
        grad = log_p.exp() * ((1 - eps) * w_y + eps * w.sum() / classes)[:, None]
        grad.scatter_add_(1, y[:, None], -(1 - eps) * w_y[:, None])
        grad -= eps * w / classes
        return grad * (grad_loss / total), None, None, None


def cross_entropy(scores, y, weight=None, label_smoothing: float = 0.0):
    """Mean loss over the batch: the signature of pipeline.tasks.losses.cross_entropy."""
    return CrossEntropyFunction.apply(scores, y, weight, label_smoothing)
