"""PCA baseline for the SAE comparisons of chapter 4: a dense, orthogonal, variance-ordered code."""
from __future__ import annotations

import torch

from ...errors import ParameterError


class PCA:
    """Principal components of the rows of ``x`` (chapter 4's baseline code).

    ``encode(x)`` gives the coordinates on the first ``n_components`` components, ``decode`` maps back.
    """

    def __init__(self, n_components: int | None = None):
        self.n_components = n_components
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None  # (k, d), rows orthonormal
        self.explained_variance: torch.Tensor | None = None

    def fit(self, x: torch.Tensor) -> "PCA":
        if x.ndim != 2 or len(x) < 2:
            raise ParameterError(f"PCA.fit needs a (N >= 2, d) matrix, got {tuple(x.shape)}")
        x = x.detach().double()
        self.mean = x.mean(0)
        _, s, vt = torch.linalg.svd(x - self.mean, full_matrices=False)
        k = self.n_components or vt.shape[0]
        if k > vt.shape[0]:
            raise ParameterError(f"PCA: n_components={k} exceeds min(N, d)={vt.shape[0]}")
        self.components = vt[:k].float()
        self.explained_variance = (s[:k] ** 2 / (len(x) - 1)).float()
        self.mean = self.mean.float()
        return self

    def _need_fit(self) -> None:
        if self.components is None:
            raise ParameterError("PCA: call fit(x) before encode/decode")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._need_fit()
        return (x - self.mean) @ self.components.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self._need_fit()
        return z @ self.components + self.mean

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encode(x)
        return self.decode(z), z
