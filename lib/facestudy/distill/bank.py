"""FIFO memory bank of past embeddings for RPSD (chapter 5, unified knowledge distillation).

The paper keeps 3 x batch embeddings; which network's embeddings it stores is not stated (METHODS.md
ambiguity 17). ``DistillLoss`` keeps two banks of the same past images, one of teacher and one of student
embeddings; ``RPSDConfig.bank`` chooses which relations RPSD compares (student bank: intra-model, the
paper's most likely reading; teacher bank: cross-model). Entries are detached copies: nothing ever
back-propagates through a bank.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ParameterError


class MemoryBank(nn.Module):
    """First-in-first-out queue of ``capacity`` embeddings of dimension ``dim`` (chapter 5).

    ``enqueue(x)`` appends the rows of ``x`` (detached); once full, the oldest rows are overwritten.
    ``contents()`` returns the stored rows oldest first, ``(len(bank), dim)``.
    """

    def __init__(self, capacity: int, dim: int) -> None:
        super().__init__()
        if capacity < 1:
            raise ParameterError(f"MemoryBank capacity must be >= 1, got {capacity} (paper: 3 x batch size)")
        if dim < 1:
            raise ParameterError(f"MemoryBank dim must be >= 1, got {dim}")
        self.capacity = int(capacity)
        self.dim = int(dim)
        self.register_buffer("data", torch.zeros(self.capacity, self.dim))
        self.ptr = 0  # next slot to write
        self.count = 0  # rows stored (<= capacity)

    @classmethod
    def for_batch(cls, batch_size: int, dim: int, multiple: int = 3) -> "MemoryBank":
        """The paper's bank: ``multiple`` (3) x ``batch_size`` rows."""
        return cls(multiple * batch_size, dim)

    def __len__(self) -> int:
        return self.count

    def reset(self) -> None:
        self.data.zero_()
        self.ptr = 0
        self.count = 0

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ParameterError(f"MemoryBank.enqueue expects (n, {self.dim}) rows, got {tuple(x.shape)}")
        x = x.detach().to(self.data.device, self.data.dtype)
        if x.shape[0] >= self.capacity:  # only the newest `capacity` rows survive
            self.data.copy_(x[-self.capacity:])
            self.ptr = 0
            self.count = self.capacity
            return
        n = x.shape[0]
        idx = (self.ptr + torch.arange(n)) % self.capacity
        self.data[idx] = x
        self.ptr = (self.ptr + n) % self.capacity
        self.count = min(self.capacity, self.count + n)

    def contents(self) -> torch.Tensor:
        """Stored rows, oldest first; a detached tensor (never part of any autograd graph)."""
        if self.count < self.capacity:
            return self.data[: self.count].detach().clone()
        return torch.roll(self.data, shifts=-self.ptr, dims=0).detach().clone()
