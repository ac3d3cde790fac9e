"""One fine-tuning step: next-token loss, backward, optimizer step."""
from __future__ import annotations


def lm_loss(model, input_ids):
    """Mean next-token cross-entropy of ``input_ids`` under ``model``."""
    return model(input_ids=input_ids, labels=input_ids).loss


def train_step(model, optimizer, input_ids) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = lm_loss(model, input_ids)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
