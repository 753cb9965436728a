"""Squared loss against the one-hot target (lab 1): linear regression's loss applied to class scores.

Forward, per example i with scores s (C classes), true class y, smoothing ε:
    t = (1 - ε) onehot(y) + ε / C                      (the target, smoothed towards uniform)
    l_i = Σ_c (s_c - t_c)² / C
    L = Σ_i w_(y_i) l_i / Σ_i w_(y_i)                    (class weights w; all 1: the plain mean)
Backward:
    ∂L/∂s_i = 2 (s_i - t_i) / C · w_(y_i) / Σ_i w_(y_i)
"""
import torch


class SquaredFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, y, weight, label_smoothing: float):
        classes = scores.shape[1]
        target = torch.zeros_like(scores).scatter_(1, y[:, None], 1 - label_smoothing) + label_smoothing / classes
        error = scores - target
        w_y = weight[y] if weight is not None else scores.new_ones(len(y))
        ctx.save_for_backward(error, w_y)
        return (w_y * error.pow(2).sum(dim=1) / classes).sum() / w_y.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        error, w_y = ctx.saved_tensors
        return 2 * error / error.shape[1] * (w_y / w_y.sum() * grad_loss)[:, None], None, None, None


def squared(scores, y, weight=None, label_smoothing: float = 0.0):
    """Mean loss over the batch: the signature of pipeline.tasks.losses.squared."""
    return SquaredFunction.apply(scores, y, weight, label_smoothing)
