"""The student's distillation objective: KL to a frozen teacher's softened outputs, as RDED
computes it. Hard-label runs use cross-entropy on CutMix-mixed one-hot targets instead
(`evaluate.cutmix.mix_targets`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_kl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float,
    t2_scale: bool = False,
) -> torch.Tensor:
    """KL(teacher || student) between temperature-softened distributions, batch mean.

    RDED's convention (`validation/main.py`, the protocol the paper follows, NOTES.md):
    ``KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T))`` with no T^2
    factor: the sum over classes of p_t (log p_t - log p_s), averaged over the batch.
    Hinton et al. multiply by T^2 to keep gradient sizes independent of T; set ``t2_scale``
    for that. Under AdamW the factor hardly matters (Adam divides out the gradient scale);
    under SGD it is a T^2 = 400x change of learning rate at T = 20.

    Args:
        student_logits: (B, C) raw student outputs.
        teacher_logits: (B, C) raw teacher outputs on the same (mixed) images.
        temperature: T; both sides are divided by it.
        t2_scale: multiply the loss by T^2.
    """
    t = float(temperature)
    # Over the class axis, named: the functional forms' implicit dim is deprecated.
    log_p_student = torch.log_softmax(student_logits.float() / t, 1)
    p_teacher = torch.softmax(teacher_logits.float() / t, 1)
    loss = F.kl_div(log_p_student, p_teacher, reduction="batchmean")
    return loss * (t * t) if t2_scale else loss
