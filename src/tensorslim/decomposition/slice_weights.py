"""How the slices of a group count in a data-aware fit: each slice's input second moment, and the
weightings that rescale them (decomposition.weighted states the objective F = sum_i f_i)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TensorslimError


@dataclass
class SliceWeights:
    """The input second moments of one group's slices. Every slice is in exactly one index list."""

    rows_index: torch.Tensor  # (n_r,) long: slices whose input is on the rows ([in, out] slices)
    rows_cov: torch.Tensor  # (n_r, R, R): their input second moments
    cols_index: torch.Tensor  # (n_c,) long: slices whose input is on the columns ([out, in] slices)
    cols_cov: torch.Tensor  # (n_c, C, C)
    rows_fisher: torch.Tensor | None = None  # (n_r,) each slice's Fisher weight phi (compress.fisher), if known
    cols_fisher: torch.Tensor | None = None  # (n_c,)

    def damped(self, damping: float, dtype=torch.float32) -> SliceWeights:
        """Each moment plus `damping` times its mean diagonal on the diagonal (positive definite even
        when the calibration data spans fewer directions than the width), in `dtype`."""

        def guard(cov):
            if cov.numel() == 0:
                return cov.to(dtype)
            cov = cov.double()
            ridge = damping * cov.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
            eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
            return (cov + ridge[:, None, None] * eye).to(dtype)

        return SliceWeights(
            self.rows_index,
            guard(self.rows_cov),
            self.cols_index,
            guard(self.cols_cov),
            self.rows_fisher,
            self.cols_fisher,
        )

    def to(self, device) -> SliceWeights:
        fields = (self.rows_index, self.rows_cov, self.cols_index, self.cols_cov, self.rows_fisher, self.cols_fisher)
        return SliceWeights(*(None if t is None else t.to(device) for t in fields))


def relative_weights(W: torch.Tensor, weights: SliceWeights) -> SliceWeights:
    """`weights` with each slice's moment divided by that slice's f_i(0) = f_i at W_hat_i = 0 (its
    output energy), so that F sums relative output errors: every projection counts alike, whatever
    the scale of its inputs (slices that shared a moment then no longer do)."""

    def scale(index, cov, on_rows):
        if not len(index):
            return cov
        D = W[index].to(cov.dtype)
        energy = ((cov @ D) * D).sum((1, 2)) if on_rows else ((D @ cov) * D).sum((1, 2))
        return cov / energy.clamp_min(1e-30)[:, None, None]

    return SliceWeights(
        weights.rows_index,
        scale(weights.rows_index, weights.rows_cov, True),
        weights.cols_index,
        scale(weights.cols_index, weights.cols_cov, False),
    )


def fisher_weights(weights: SliceWeights) -> SliceWeights:
    """`weights` with each slice's moment times its Fisher weight phi_i, so that F sums the output
    errors weighted by the loss's curvature at each slice's outputs (compress.fisher)."""
    if weights.rows_fisher is None and weights.cols_fisher is None:
        raise TensorslimError(
            "the Fisher weighting needs each slice's Fisher weight, and these moments have none",
            "calibrate with fisher=True (compress.calibration.calibrate)",
        )

    def scale(cov, phi):
        return cov if phi is None else cov * phi.to(cov)[:, None, None]

    return SliceWeights(
        weights.rows_index,
        scale(weights.rows_cov, weights.rows_fisher),
        weights.cols_index,
        scale(weights.cols_cov, weights.cols_fisher),
    )
