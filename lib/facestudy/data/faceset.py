"""FaceSet: the one in-memory dataset type every chapter passes around (chapter 0 introduces it).

Images are uint8 RGB NHWC; ``labels`` are identity indices (-1 = unknown); ``meta`` has one row per image
(``identity`` name, attributes, landmark columns ``lmk_x0, lmk_y0, ... lmk_x4, lmk_y4`` in pixels when
known). ``source`` says whether the faces are real or from the synthetic world.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..errors import DataError

LANDMARK_COLUMNS = [f"lmk_{a}{i}" for i in range(5) for a in ("x", "y")]


@dataclass
class FaceSet:
    images: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame
    name: str = "faces"
    source: str = "real"  # "real" | "synthetic"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"FaceSet {self.name!r}: images must be uint8 (N, H, W, 3), got "
                            f"{self.images.dtype} {self.images.shape}")
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.images)
        if self.labels.shape != (n,):
            raise DataError(f"FaceSet {self.name!r}: labels must have shape ({n},), got {self.labels.shape}")
        if self.meta is None:
            self.meta = pd.DataFrame(index=range(n))
        if len(self.meta) != n:
            raise DataError(f"FaceSet {self.name!r}: meta has {len(self.meta)} rows for {n} images")
        self.meta = self.meta.reset_index(drop=True)
        if self.source not in ("real", "synthetic"):
            raise DataError(f"FaceSet {self.name!r}: source must be 'real' or 'synthetic', got {self.source!r}")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_identities(self) -> int:
        lab = self.labels[self.labels >= 0]
        return int(len(np.unique(lab)))

    @property
    def landmarks(self) -> np.ndarray | None:
        """(N, 5, 2) float32 pixel landmarks, or None when the set has none."""
        if not all(c in self.meta.columns for c in LANDMARK_COLUMNS):
            return None
        return self.meta[LANDMARK_COLUMNS].to_numpy(np.float32).reshape(-1, 5, 2)

    def subset(self, idx) -> "FaceSet":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return FaceSet(self.images[idx], self.labels[idx], self.meta.iloc[idx].reset_index(drop=True),
                       name=self.name, source=self.source, info=dict(self.info))

    def relabel(self) -> "FaceSet":
        """Labels renumbered 0..K-1 in order of first appearance (unknown stays -1)."""
        labels = self.labels.copy()
        known = labels >= 0
        _, inv = np.unique(labels[known], return_inverse=True)
        labels[known] = inv
        return FaceSet(self.images, labels, self.meta, name=self.name, source=self.source, info=dict(self.info))

    def torch(self, transform: Callable | None = None) -> "FaceTorchDataset":
        return FaceTorchDataset(self, transform)

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3] if len(self.images) else (0, 0)
        return (f"FaceSet({self.name!r}, source={self.source}, n={len(self)}, identities={self.n_identities}, "
                f"size={h}x{w})")


def concat(sets: list[FaceSet], name: str | None = None) -> FaceSet:
    """Stack FaceSets; identity labels are offset so identities from different sets never collide."""
    if not sets:
        raise DataError("concat needs at least one FaceSet")
    images, labels, metas, offset = [], [], [], 0
    for s in sets:
        lab = s.labels.copy()
        lab[lab >= 0] += offset
        offset = max(offset, int(lab.max()) + 1 if (lab >= 0).any() else offset)
        images.append(s.images)
        labels.append(lab)
        metas.append(s.meta.assign(dataset=s.name))
    source = "real" if all(s.source == "real" for s in sets) else "synthetic" if all(
        s.source == "synthetic" for s in sets) else "real"
    return FaceSet(np.concatenate(images), np.concatenate(labels), pd.concat(metas, ignore_index=True),
                   name=name or "+".join(s.name for s in sets), source=source)


class FaceTorchDataset(torch.utils.data.Dataset):
    """(image uint8 CHW tensor, label, index) triples; models normalise inside."""

    def __init__(self, faces: FaceSet, transform: Callable | None = None):
        self.faces = faces
        self.transform = transform

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int):
        img = torch.from_numpy(np.ascontiguousarray(self.faces.images[i])).permute(2, 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.faces.labels[i]), i
