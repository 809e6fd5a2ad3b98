"""Attention-bias modules for the face ViT: iRPE and KP-RPE (chapter 3, METHODS.md §1.2–1.3).

Both plug into :class:`facestudy.models.vit.FaceViT` through its ``rpe`` hook (``prepare`` once per forward,
then ``logits_bias`` / ``value_term`` per block). Both are zero-initialised, so at initialisation a ViT
with either module computes exactly the plain ViT's output.

KP-RPE (``ctx_type``):

* ``rel_keypoint_splithead_unshared`` (released): one Linear(2K -> 49·H·L); layer l, head h uses outputs
  (l·H + h)·49 + bucket. ``B^{l,h}_{ij} = [W^{l,h} D_i + c^{l,h}]_{I(i,j)}``, D_i the query patch centre
  minus each keypoint (2K numbers, no gradient).
* ablations: ``rel_keypoint`` (one 49-table for all layers and heads), ``rel_keypoint_unshared`` (per layer),
  ``rel_keypoint_splithead`` (per head), ``rel_keypoint_v2`` / ``rel_keypoint_unshared_v2`` (MLP
  2K -> 256 -> ReLU -> LN -> out), ``keypoint`` (absolute keypoints -> one 49-table, same for all queries).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ParameterError
from .buckets import bucket_table, num_buckets

CTX_TYPES: tuple[str, ...] = (
    "rel_keypoint_splithead_unshared", "rel_keypoint", "rel_keypoint_unshared", "rel_keypoint_splithead",
    "rel_keypoint_v2", "rel_keypoint_unshared_v2", "keypoint",
)


def _grid(grid: int | tuple[int, int]) -> tuple[int, int]:
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def patch_centres(grid: int | tuple[int, int], device=None, dtype=torch.float32) -> torch.Tensor:
    """(N, 2) patch centres (u, v) = ((col + .5)/W, (row + .5)/H), tokens row-major (chapter 3, §1.3)."""
    gh, gw = _grid(grid)
    rows, cols = torch.meshgrid(torch.arange(gh, device=device, dtype=dtype),
                                torch.arange(gw, device=device, dtype=dtype), indexing="ij")
    return torch.stack([(cols.reshape(-1) + 0.5) / gw, (rows.reshape(-1) + 0.5) / gh], dim=1)


@torch.no_grad()
def relative_keypoints(keypoints: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """D: (B, N, 2K) = [u - P1x, v - P1y, u - P2x, ...] for every query patch (no gradient), §1.3."""
    centres = patch_centres(grid, device=keypoints.device, dtype=keypoints.dtype)  # (N, 2)
    diff = centres[None, :, None, :] - keypoints[:, None, :, :]  # (B, N, K, 2)
    return diff.flatten(2)


def gather_buckets(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """out[b, h, i, j] = table[b, h, i, I(i, j)] (or table[b, h, 0, I(i, j)] when the table has one row)."""
    n = index.shape[0]
    b, h = table.shape[:2]
    table = table.expand(b, h, n, table.shape[-1])  # a one-row table (absolute keypoints) serves every query
    return torch.gather(table, -1, index.expand(b, h, n, n))  # gather: ~8x faster than fancy indexing on CPU


class _BucketModule(nn.Module):
    uses_keypoints = False

    def __init__(self, grid: int | tuple[int, int], ratio: float) -> None:
        super().__init__()
        self.grid = _grid(grid)
        self.ratio = float(ratio)
        self.num_buckets = num_buckets(ratio)
        self.register_buffer("index", bucket_table(self.grid, ratio), persistent=False)

    def value_term(self, layer: int, attn: torch.Tensor, state: Any) -> torch.Tensor | None:
        return None


@dataclass
class _KPState:
    tables: list[torch.Tensor]  # one (B, H or 1, N or 1, nb) table per layer


class KPRPE(_BucketModule):
    """KeyPoint Relative Position Encoding (chapter 3, METHODS.md §1.3), zero-initialised.

    ``keypoint_indices`` selects which of the 5 landmarks are used (the keypoint-count ablation, e.g.
    ``(0, 1)`` = the two eyes); ``missing`` says what a forward without keypoints does: ``"error"`` or
    ``"zero"`` (no bias: the plain ViT).
    """

    uses_keypoints = True

    def __init__(self, grid: int | tuple[int, int], heads: int, depth: int,
                 ctx_type: str = "rel_keypoint_splithead_unshared", num_keypoints: int = 5,
                 keypoint_indices: tuple[int, ...] | list[int] | None = None, ratio: float = 1.9,
                 hidden: int = 256, missing: str = "error") -> None:
        super().__init__(grid, ratio)
        if ctx_type not in CTX_TYPES:
            raise ParameterError(f"kprpe: unknown ctx_type {ctx_type!r}; valid: {', '.join(CTX_TYPES)}")
        if missing not in ("error", "zero"):
            raise ParameterError(f"kprpe: missing must be 'error' or 'zero', got {missing!r}")
        idx = tuple(range(num_keypoints)) if keypoint_indices is None else tuple(int(i) for i in keypoint_indices)
        if not idx or any(i < 0 or i > 4 for i in idx):
            raise ParameterError(f"kprpe: keypoint_indices must be a non-empty subset of 0..4, got {idx!r}")
        self.ctx_type, self.heads, self.depth = ctx_type, int(heads), int(depth)
        self.keypoint_indices = idx
        self.missing = missing
        nb = self.num_buckets
        out = {"rel_keypoint": nb, "rel_keypoint_v2": nb, "keypoint": nb,
               "rel_keypoint_unshared": nb * depth, "rel_keypoint_unshared_v2": nb * depth,
               "rel_keypoint_splithead": nb * heads,
               "rel_keypoint_splithead_unshared": nb * heads * depth}[ctx_type]
        k2 = 2 * len(idx)
        if ctx_type.endswith("_v2"):
            self.net: nn.Module = nn.Sequential(nn.Linear(k2, hidden), nn.ReLU(), nn.LayerNorm(hidden),
                                                nn.Linear(hidden, out))
            last = self.net[-1]
        else:
            self.net = nn.Linear(k2, out)
            last = self.net
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    @property
    def offset_layer(self) -> nn.Linear:
        """The zero-initialised linear layer producing the offsets (its weight is W, bias c)."""
        return self.net[-1] if isinstance(self.net, nn.Sequential) else self.net  # type: ignore[return-value]

    def tables(self, keypoints: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer tables f(P): list of (B, H or 1, N or 1, 49) tensors, computed once per image."""
        kp = keypoints[:, list(self.keypoint_indices)]
        B, nb, L, H = kp.shape[0], self.num_buckets, self.depth, self.heads
        if self.ctx_type == "keypoint":
            t = self.net(kp.flatten(1)).view(B, 1, 1, nb)
            return [t] * L
        y = self.net(relative_keypoints(kp, self.grid))  # (B, N, out)
        n = y.shape[1]
        if self.ctx_type in ("rel_keypoint", "rel_keypoint_v2"):
            return [y.unsqueeze(1)] * L
        if self.ctx_type in ("rel_keypoint_unshared", "rel_keypoint_unshared_v2"):
            y = y.view(B, n, L, nb).transpose(1, 2)
            return [y[:, l:l + 1] for l in range(L)]
        if self.ctx_type == "rel_keypoint_splithead":
            return [y.view(B, n, H, nb).transpose(1, 2)] * L
        y = y.view(B, n, L * H, nb).transpose(1, 2)  # rel_keypoint_splithead_unshared
        return [y[:, l * H:(l + 1) * H] for l in range(L)]

    def prepare(self, tokens: torch.Tensor, grid: tuple[int, int], keypoints: torch.Tensor | None) -> Any:
        if tuple(grid) != self.grid:
            raise ParameterError(f"kprpe: built for a {self.grid} patch grid but the ViT has {tuple(grid)}")
        if keypoints is None:
            if self.missing == "zero":
                return None
            raise ParameterError("KP-RPE needs keypoints: call model(x, keypoints) with (B, 5, 2) landmarks "
                                 "normalised to [0, 1] (facestudy.kprpe.normalize_keypoints), or build it "
                                 "with rpe_kwargs={'missing': 'zero'}")
        if keypoints.shape[1] < 5 and max(self.keypoint_indices) >= keypoints.shape[1]:
            raise ParameterError(f"kprpe: keypoints have {keypoints.shape[1]} points but indices "
                                 f"{self.keypoint_indices} are used; pass all 5 landmarks")
        return _KPState(self.tables(keypoints.to(tokens.dtype)))

    def logits_bias(self, layer: int, q: torch.Tensor, k: torch.Tensor, state: Any) -> torch.Tensor | None:
        if state is None:
            return None
        return gather_buckets(state.tables[layer], self.index)

    def offset_map(self, keypoints: torch.Tensor, layer: int, query: int) -> torch.Tensor:
        """Bias B_{query, j} over all key patches j as a (heads, grid_h, grid_w) map (supplement Figs. 12–13)."""
        with torch.no_grad():
            table = self.tables(keypoints[:1])[layer]  # (1, H', N', nb)
            bias = gather_buckets(table, self.index)[0, :, query]  # (H', N)
        return bias.view(bias.shape[0], *self.grid)


class IRPE(_BucketModule):
    """iRPE, contextual product method (Wu et al. 2021) on ``on`` ⊆ {q, k, v} (chapter 3's baseline, §1.3).

    Keys: ``b_ij += q_i · r^K_{I(i,j)}``; queries: ``b_ij += k_j · r^Q_{I(j,i)}``; values:
    ``out_i += Σ_j a_ij r^V_{I(i,j)}``. One table per layer (shared by heads when ``shared_head``),
    zero-initialised.
    """

    def __init__(self, grid: int | tuple[int, int], head_dim: int, heads: int, depth: int, on: str = "qkv",
                 ratio: float = 1.9, shared_head: bool = True) -> None:
        super().__init__(grid, ratio)
        if not on or set(on) - set("qkv"):
            raise ParameterError(f"irpe: 'on' must be a non-empty subset of 'qkv', got {on!r}")
        self.on = "".join(c for c in "qkv" if c in on)
        self.heads, self.depth, self.head_dim = heads, depth, head_dim
        hh = 1 if shared_head else heads
        nb = self.num_buckets
        self.tables = nn.ParameterDict({
            c: nn.Parameter(torch.zeros(depth, hh, head_dim, nb) if c != "v" else torch.zeros(depth, hh, nb, head_dim))
            for c in self.on})

    def prepare(self, tokens: torch.Tensor, grid: tuple[int, int], keypoints: torch.Tensor | None) -> Any:
        if tuple(grid) != self.grid:
            raise ParameterError(f"irpe: built for a {self.grid} patch grid but the ViT has {tuple(grid)}")
        return None

    def logits_bias(self, layer: int, q: torch.Tensor, k: torch.Tensor, state: Any) -> torch.Tensor | None:
        bias = None
        if "k" in self.on:  # q (already scaled) against key-offset tables
            ctx = torch.einsum("bhnd,hdk->bhnk", q, self.tables["k"][layer].expand(self.heads, -1, -1))
            bias = gather_buckets(ctx, self.index)
        if "q" in self.on:
            ctx = torch.einsum("bhnd,hdk->bhnk", k * q.new_tensor(self.head_dim ** -0.5),
                               self.tables["q"][layer].expand(self.heads, -1, -1))
            bq = gather_buckets(ctx, self.index).transpose(-2, -1)
            bias = bq if bias is None else bias + bq
        return bias

    def value_term(self, layer: int, attn: torch.Tensor, state: Any) -> torch.Tensor | None:
        if "v" not in self.on:
            return None
        B, H, N, _ = attn.shape
        pooled = attn.new_zeros(B, H, N, self.num_buckets)
        pooled.scatter_add_(-1, self.index.expand(B, H, N, N), attn)  # Σ_j a_ij per bucket
        return pooled @ self.tables["v"][layer].expand(self.heads, -1, -1)
