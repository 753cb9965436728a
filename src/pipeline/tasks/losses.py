"""Classification losses on a linear model's scores (lab 1, "loss function design"): the same scores, three ideas of
what a good score is. `task.loss` picks one; every one of them takes the per-class weights of data.class_weighting.

- cross_entropy: softmax, then the negative log-likelihood of the true class (logistic regression's loss).
- hinge: the multi-class SVM margin loss, mean over classes of max(0, 1 - s_true + s_other): zero once the true
  class leads every other by a margin of 1; scores are not probabilities.
- squared: mean squared error against the one-hot target (the linear-regression loss, applied to classes).
"""
from torch.nn import functional as F


def cross_entropy(scores, y, weight=None, label_smoothing: float = 0.0):
    return F.cross_entropy(scores, y, weight=weight, label_smoothing=label_smoothing)


def hinge(scores, y, weight=None, label_smoothing: float = 0.0):
    return weighted_mean(F.multi_margin_loss(scores, y, margin=1.0, reduction="none"), y, weight)


def squared(scores, y, weight=None, label_smoothing: float = 0.0):
    """Against the one-hot target (smoothed towards uniform by label_smoothing, as cross-entropy's is)."""
    classes = scores.shape[-1]
    target = F.one_hot(y, classes).to(scores.dtype) * (1 - label_smoothing) + label_smoothing / classes
    return weighted_mean((scores - target).pow(2).mean(dim=-1), y, weight)


def weighted_mean(per_example, y, weight=None):
    """The mean over the batch, each example weighed by its class's weight: what cross-entropy's `weight` does."""
    if weight is None:
        return per_example.mean()
    weights = weight[y]
    return (per_example * weights).sum() / weights.sum()


LOSSES = {"cross_entropy": cross_entropy, "hinge": hinge, "squared": squared}
