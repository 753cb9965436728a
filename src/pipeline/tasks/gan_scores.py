"""How a judge scores generated images against real ones: the Inception-style score, the entropy of the predicted
classes, and the Fréchet distance between feature distributions. Computed here in float64 torch (the Fréchet
distance's matrix square root from two symmetric eigendecompositions), so no Inception weights are needed."""
import math

import torch


def inception_score(probabilities: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))), p(y) the mean of p(y|x) over the set: up to the number of classes when every
    image is classified with confidence and the classes are balanced; 1 when the judge cannot tell them apart.
    Over the whole set at once (not the mean of 10 splits that Salimans et al. report)."""
    p = probabilities.double().clamp_min(1e-12)
    marginal = p.mean(0, keepdim=True)
    return math.exp(float((p * (p.log() - marginal.log())).sum(1).mean()))


def class_entropy(probabilities: torch.Tensor) -> float:
    """The entropy (nats) of the histogram of predicted classes: ln(number of classes) when every class is
    predicted equally often, 0 when one class takes all (a generator that collapsed onto one mode)."""
    counts = torch.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]).double()
    share = counts[counts > 0] / counts.sum()
    return float(-(share * share.log()).sum())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (rows are examples):
    |mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr((S_a^½ S_b S_a^½)^½); 0 for identical sets."""
    a, b = a.double(), b.double()
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_of_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * trace_of_root
    return float(distance.clamp_min(0))
