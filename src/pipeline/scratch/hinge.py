"""Multi-class hinge loss (lab 1): the SVM margin, torch.nn.functional.multi_margin_loss with margin 1.

Forward, per example i with scores s (C classes) and true class y:
    l_i = Σ_(j ≠ y) max(0, 1 - s_y + s_j) / C          zero once s_y leads every other score by 1
    L = Σ_i w_(y_i) l_i / Σ_i w_(y_i)                    (class weights w; all 1: the plain mean)
Backward, with a_ij = 1 where the margin is violated (1 - s_y + s_j > 0, j ≠ y), else 0:
    ∂l_i/∂s_j = a_ij / C   (j ≠ y),     ∂l_i/∂s_y = -Σ_j a_ij / C
    ∂L/∂s_i = ∂l_i/∂s · w_(y_i) / Σ_i w_(y_i)
"""
import torch


class HingeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, y, weight):
        classes = scores.shape[1]
        margins = (1 - scores.gather(1, y[:, None]) + scores).clamp(min=0)
        margins.scatter_(1, y[:, None], 0)  # the true class is not its own rival
        w_y = weight[y] if weight is not None else scores.new_ones(len(y))
        per_example = margins.sum(dim=1) / classes
        ctx.save_for_backward(margins, y, w_y)
        return (w_y * per_example).sum() / w_y.sum()

    @staticmethod
    def backward(ctx, grad_loss):
        margins, y, w_y = ctx.saved_tensors
        classes = margins.shape[1]
        violated = (margins > 0).to(margins.dtype)
        grad = violated.scatter(1, y[:, None], -violated.sum(dim=1, keepdim=True)) / classes
        return grad * (w_y / w_y.sum() * grad_loss)[:, None], None, None


def hinge(scores, y, weight=None, label_smoothing: float = 0.0):
    """Mean loss over the batch: the signature of pipeline.tasks.losses.hinge (which refuses label smoothing)."""
    return HingeFunction.apply(scores, y, weight)
