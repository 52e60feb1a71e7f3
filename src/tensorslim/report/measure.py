"""Parameters by part, projection-matrix weights and FLOPs per token of a teacher or a student.

They are counted in `compress.counts` (which knows the factored projections); speed is measured in
report/timing.py.
"""

from __future__ import annotations

from ..compress.counts import count_parameters, flops_per_token, matrix_weights

encoder_matrix_weights = matrix_weights

__all__ = ["count_parameters", "encoder_matrix_weights", "flops_per_token"]
