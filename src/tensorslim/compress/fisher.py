"""Fisher weights of the decomposed projections: how far the model's loss moves per unit of output
error in each projection, so that a data-aware fit spends its accuracy where the loss needs it.

For a projection with outputs y_t (t over the real tokens) and g_t = dL/dy_t, a small output error
e_t raises the loss by about 1/2 E[(g_t^T e_t)^2] (the Fisher approximation). Keeping only the
diagonal of E[g g^T] and taking the error as independent of the gradient gives
1/2 sum_j D_j E[e_tj^2] with the diagonal Fisher

    D_j = (1 / N) sum_t g_tj^2    (N real tokens; j over the projection's outputs).

`output_fisher` returns D for every target module. A slice of a group takes the mean of D over its
output range as its weight phi (`compress.calibration.slice_covariances`), and the `fisher` weighting
of a data-aware fit minimises sum_i phi_i f_i: each slice's output error on the calibration inputs
times its share of the loss's curvature. Labels are drawn from the model's own predictive
distribution (the true Fisher, as K-FAC does, so no gold labels are needed): one class per
sequence for a sequence classifier, one token per real position for a language-model head.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..data.calibration import model_inputs
from ..errors import TensorslimError
from .inplace import targets

log = logging.getLogger(__name__)


def sampled_loss(logits: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sum of the negative log-likelihoods of labels drawn from the model's own predictions:
    logits (B, C) are one prediction per sequence, (B, T, V) one per position (real ones only,
    `mask` (B, T)); C = 1 is a regression score, its label the score plus standard normal noise."""
    if logits.dim() == 2 and logits.shape[-1] == 1:
        noise = torch.randn(logits.shape, generator=generator).to(logits)
        return 0.5 * ((logits - (logits.detach() + noise)) ** 2).sum()
    flat = logits.reshape(-1, logits.shape[-1]).float()
    with torch.no_grad():
        labels = torch.multinomial(flat.softmax(-1).cpu(), 1, generator=generator)[:, 0].to(flat.device)
    losses = nn.functional.cross_entropy(flat, labels, reduction="none")
    if logits.dim() == 3:
        losses = losses[mask.reshape(-1).bool()]
    return losses.sum()


def output_fisher(
    model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], ops: str = "all", seed: int = 0
) -> dict[str, torch.Tensor]:
    """{key "<layer>.<path>": (out,) float64 diagonal Fisher D of that module's outputs} over the
    real tokens of `batches` (module docstring), with labels sampled by a generator seeded `seed`.
    The model runs in eval mode where its weights are; its parameters get no gradients."""
    found = targets(model, ops)
    outputs: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    device = next(model.parameters()).device
    handles = [
        module.register_forward_hook(lambda m, args, out, key=key: outputs.__setitem__(key, out))
        for key, module, _ in found
    ]
    # a leaf that needs a gradient at the embeddings, so outputs carry one even when the weights do not
    handles.append(model.get_input_embeddings().register_forward_hook(lambda m, a, out: out.detach().requires_grad_()))
    generator = torch.Generator().manual_seed(seed)
    tokens = 0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            for batch in tqdm(batches, desc="fisher", unit="batch", leave=False):
                inputs = model_inputs(model, batch, device)
                mask = inputs["attention_mask"]
                logits = getattr(model(**inputs), "logits", None)
                if logits is None:
                    raise TensorslimError(
                        f"{type(model).__name__} has no prediction head, so the Fisher weighting has no loss",
                        "decompose a model with its head (sequence classification or language model), "
                        "or use --weighting absolute or relative",
                    )
                keys = list(outputs)
                grads = torch.autograd.grad(sampled_loss(logits, mask, generator), [outputs[k] for k in keys])
                real = mask.reshape(-1).bool()
                for key, grad in zip(keys, grads, strict=True):
                    g = grad.reshape(-1, grad.shape[-1])
                    g = g[real] if g.shape[0] == real.numel() else g
                    sums[key] = sums.get(key, 0) + (g.double() ** 2).sum(0)
                tokens += int(real.sum())
                outputs.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [key for key, _, _ in found if key not in sums]
    if missing:
        raise TensorslimError(
            f"projection {missing[0]} took no part in the forward pass",
            "this model's forward does not match its family's table entry",
        )
    log.info("Fisher weights of %d modules over %d tokens", len(sums), tokens)
    return {key: total / tokens for key, total in sums.items()}
