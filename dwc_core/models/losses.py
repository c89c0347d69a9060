"""Loss functions of DWC and its baselines, as public functions on plain tensors.

Conventions: ``query`` and ``target`` are (B, D) batches where row i of ``query`` should retrieve row i of
``target`` (in-batch negatives). Functions that expect L2-normalised inputs say so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ssg_contrastive(
    query: torch.Tensor,
    target: torch.Tensor,
    labels: torch.Tensor,
    tau: float = 0.07,
    alpha: float = 0.2,
    detach_soft: bool = False,
) -> torch.Tensor:
    """DWC's soft-similarity-label contrastive loss (one direction, query → target).

    P = row-normalised hard label matches (duplicate-aware), S = softmax(t·tᵀ/τ) (soft labels from the targets'
    own similarities; not detached in the official code), Y = α·S + (1−α)·P, loss = −mean_i Σ_j Y_ij·log
    softmax(q·tᵀ/τ)_ij. Inputs are L2-normalised embeddings.
    """
    same = (labels.view(-1, 1) == labels.view(1, -1)).to(query.dtype)
    hard = same / same.sum(dim=1, keepdim=True)
    soft = torch.softmax(target @ target.t() / tau, dim=1)
    if detach_soft:
        soft = soft.detach()
    mix = alpha * soft + (1.0 - alpha) * hard
    log_prob = torch.log_softmax(query @ target.t() / tau, dim=1)
    return -(mix * log_prob).sum(dim=1).mean()


def mutual_kl(
    q_self: torch.Tensor,
    t_self: torch.Tensor,
    q_other: torch.Tensor,
    t_other: torch.Tensor,
    scale: float = 10.0,
) -> torch.Tensor:
    """DWC's mutual-learning term: KL(p_other ‖ p_self), batchmean, where p = softmax(scale·q·tᵀ) per stream.

    The other stream is the teacher: its inputs are detached here.
    """
    log_p_self = torch.log_softmax(scale * q_self @ t_self.t(), dim=1)
    p_other = torch.softmax(scale * q_other.detach() @ t_other.detach().t(), dim=1)
    return F.kl_div(log_p_self, p_other, reduction="batchmean")


def batch_based_classification(query: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Cross-entropy over in-batch logits ``scale·q·tᵀ`` with the diagonal as the class (TIRG/ComposeAE with
    s-scaled features and scale=1; AMC: normalised features, scale=10; CLIP4Cir: normalised, scale=100)."""
    logits = scale * query @ target.t()
    return F.cross_entropy(logits, torch.arange(query.size(0), device=query.device))


def soft_triplet(
    query: torch.Tensor,
    target: torch.Tensor,
    triplets_per_anchor: int = 3,
    generator: torch.Generator | None = None,
    original_gradient: bool = True,
) -> torch.Tensor:
    """TIRG's soft triplet loss on the pooled batch [q₁..q_B, t₁..t_B] with labels [0..B−1, 0..B−1].

    For every anchor the single positive is the other item with its label; ``triplets_per_anchor`` negatives are
    drawn at random among the 2B−2 items with other labels. Loss = mean log(1 + exp(d_ap − d_an)) with squared
    Euclidean distances. ``original_gradient`` keeps the value but halves the gradient, as the original
    hand-written backward did.
    """
    b = query.size(0)
    x = torch.cat([query, target], dim=0)
    labels = torch.arange(b, device=x.device).repeat(2)
    dist = torch.cdist(x, x).pow(2).clamp(min=0)
    n = 2 * b
    anchors = torch.arange(n, device=x.device)
    positives = (anchors + b) % n
    # sample negatives: random scores, pick top-k among items with a different label
    scores = torch.rand(n, n, generator=generator, device="cpu").to(x.device)
    scores[labels.view(-1, 1) == labels.view(1, -1)] = -1.0
    k = min(triplets_per_anchor, n - 2)
    negatives = scores.topk(k, dim=1).indices  # (n, k)
    d_ap = dist[anchors, positives].unsqueeze(1).expand(-1, k)
    d_an = dist.gather(1, negatives)
    loss = F.softplus(d_ap - d_an).mean()
    if original_gradient:
        loss = 0.5 * loss + 0.5 * loss.detach()
    return loss


def gram_mse(composed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AMC's similarity-MSE: mean over (i, j) of (ĉ_i·ĉ_j − t̂_i·t̂_j)² (hats = L2-normalised, nothing detached)."""
    c = F.normalize(composed, dim=-1)
    t = F.normalize(target, dim=-1)
    return ((c @ c.t() - t @ t.t()) ** 2).mean()
