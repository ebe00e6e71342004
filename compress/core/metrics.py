"""Classification metrics in plain torch (no sklearn import on the hot path)."""

from __future__ import annotations

import torch


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Binary ROC AUC via the Mann-Whitney statistic, with average ranks for ties."""
    scores, labels = scores.double().flatten(), labels.flatten().bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_scores, order = torch.sort(scores)
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.double)
    # Tied scores share the mean of their ranks.
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True,
                                                     return_counts=True)
    if len(uniq) < len(scores):
        sums = torch.zeros(len(uniq), dtype=torch.double).index_add_(0, inverse, ranks[order])
        ranks[order] = (sums / counts)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logistic loss for one-logit binary heads, cross-entropy otherwise."""
    if logits.shape[1] == 1:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return torch.nn.functional.cross_entropy(logits, y)


def classification_metrics(logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    out = {"loss": float(loss_fn(logits, y))}
    if logits.shape[1] == 1:
        pred = (logits[:, 0] > 0).long()
        out["auc"] = roc_auc(logits[:, 0], y)
    else:
        pred = logits.argmax(1)
    out["accuracy"] = int((pred == y).sum()) / len(y)  # exact: 0.954, not float32's 0.95399999
    return out


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, task: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * task + alpha * T^2 * KL(teacher_T || student_T) (Hinton et al.): one-logit
    binary heads compare Bernoulli distributions (sigmoid), others softmax ones."""
    f, t = torch.nn.functional, temperature
    if student.shape[1] == 1:  # KL of Bernoullis = cross-entropy minus the teacher's entropy
        p = torch.sigmoid(teacher / t)
        cross = -(p * f.logsigmoid(student / t) + (1 - p) * f.logsigmoid(-student / t))
        own = -(p * f.logsigmoid(teacher / t) + (1 - p) * f.logsigmoid(-teacher / t))
        soft = (cross - own).mean()
    else:
        soft = f.kl_div(f.log_softmax(student / t, dim=1), f.log_softmax(teacher / t, dim=1),
                        reduction="batchmean", log_target=True)
    return (1 - alpha) * task + alpha * t * t * soft
