"""Loss-family heads on the frozen real MobileFaceNet trunk (chapter 1, claims G3 and G4).

The paper compares *competent* face-recognition models trained with different losses. Training whole
networks is out of reach on a 2-core CPU, so we keep the real MobileFaceNet's trunk frozen, cache its
7x7x512 ``conv_sep`` map once per face set (:func:`facestudy.eval.trunk.trunk_features`) and train only its
*tail* (global depthwise conv + linear + BatchNorm, ~92 k parameters; ``model.tail("conv_sep")``) with a
softmax ("FaceNet-like", Euclidean), ArcFace, CosFace or AdaFace loss on top. A head trains in seconds, so
every loss gets several seeds. What this narrows: the loss acts on the last layers only; the features it
reshapes were learnt by ArcFace on MS1M. A full-network comparison needs the ``gpu`` profile.

:func:`train_tail` trains (or loads from the cache) one tail; :func:`embed_tail` maps cached features to
embeddings. ``aug_features`` (features of augmented copies of the same images, e.g. hue-shifted, cached
with ``trunk_features(..., augment=(name, fn))``) turns the same loop into the fine-tuning experiment
(G4): each sample is replaced by its augmented copy with probability ``aug_p``.
"""
from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ParameterError

#: the four loss families compared in chapter 1, and how their embeddings are compared
FAMILIES: dict[str, str] = {"softmax": "euclidean", "arcface": "cosine", "cosface": "cosine", "adaface": "cosine"}


def reset_tail(tail: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every conv / linear / BatchNorm of a tail in place (seeded): a head trained from scratch."""
    gen = torch.Generator().manual_seed(int(seed))
    for m in tail.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_out), generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.Linear):
            with torch.no_grad():
                m.weight.normal_(0.0, 1.0 / math.sqrt(m.in_features), generator=gen)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()
            m.reset_running_stats()
    return tail


def _digest(*arrays: Any) -> str:
    h = hashlib.sha1()
    for a in arrays:
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        a = np.ascontiguousarray(a)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def module_digest(module: nn.Module) -> str:
    """Hash of a module's state (weights and buffers), for cache keys."""
    sd = module.state_dict()
    return _digest(*[sd[k] for k in sorted(sd)])


def embed_tail(tail: nn.Module, features: torch.Tensor, *, normalize: bool = True,
               batch_size: int = 1024) -> np.ndarray:
    """Embeddings of cached trunk features through ``tail`` (eval mode, on the tail's device), L2-normalised
    unless asked not to."""
    tail.eval()
    dev = next(tail.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(features), batch_size):
            out.append(tail(features[i:i + batch_size].to(dev).float()).cpu())
    emb = torch.cat(out) if out else torch.zeros(0, 1)
    if normalize:
        emb = torch.nn.functional.normalize(emb, dim=1)
    return emb.numpy()


def train_tail(features: torch.Tensor, labels: Any, loss: str, *, init: nn.Module, reinit: bool = True,
               seed: int = 0, epochs: int = 10, batch_size: int = 128, lr: float = 0.1,
               weight_decay: float = 5e-4, head_init: str = "random", aug_features: torch.Tensor | None = None,
               aug_p: float = 0.0, aug_name: str = "", features_key: str = "", cache: bool = True,
               head_kw: dict[str, Any] | None = None, device: Any = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a copy of ``init`` (a MobileFaceNet tail) with loss ``loss`` on cached trunk ``features``.

    ``reinit`` re-initialises the tail (a loss-family head trained from scratch, G3); ``reinit=False``
    fine-tunes the pretrained tail (G4), where ``head_init="centroids"`` starts the classifier at the
    normalised class means of the starting embeddings (so the first steps do not wreck the tail).
    SGD (momentum 0.9, cosine schedule), seeded: the same arguments give the same weights. The result is
    cached under ``<cache>/geometry/heads`` keyed by every input (features by ``features_key`` and a hash of
    the labels). ``device`` (default: the features' own) is where the training runs: the features move there
    once, the batches are drawn on the CPU from the same seed, and the tail comes back on the CPU. Returns
    (tail in eval mode, info with ``final_loss``, ``loaded``, ``path``).
    """
    from .. import losses
    from ..train import checkpoint_path

    if loss not in FAMILIES:
        raise ParameterError(f"unknown loss family {loss!r}; valid: {', '.join(FAMILIES)}")
    if head_init not in ("random", "centroids"):
        raise ParameterError(f"head_init must be 'random' or 'centroids', got {head_init!r}")
    labels_np = np.asarray(labels, dtype=np.int64)
    if len(labels_np) != len(features):
        raise ParameterError(f"{len(features)} feature rows for {len(labels_np)} labels")
    if (labels_np < 0).any():
        raise ParameterError("train_tail needs labels >= 0 (relabel the face set first)")
    if aug_features is not None and aug_features.shape != features.shape:
        raise ParameterError(f"aug_features {tuple(aug_features.shape)} must match features {tuple(features.shape)}")
    if aug_p > 0 and aug_features is None:
        raise ParameterError("aug_p > 0 needs aug_features")
    n_classes = int(labels_np.max()) + 1
    head_kw = dict(head_kw or {})
    spec = ("tail-v2", loss, head_kw, module_digest(init), reinit, seed, epochs, batch_size, lr, weight_decay,
            head_init, aug_name if aug_p > 0 else "", float(aug_p), features_key or _digest(features[:64]),
            _digest(labels_np), tuple(features.shape))
    path = checkpoint_path("geometry/heads", *spec)
    tail = copy.deepcopy(init).cpu()  # re-initialised from a CPU generator: the same weights on every device
    if reinit:
        reset_tail(tail, seed)
    if cache and path.exists():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            tail.load_state_dict(blob["tail"])
            return tail.eval(), {"final_loss": float(blob["final_loss"]), "loaded": True, "path": str(path)}
        except Exception:  # noqa: BLE001 - a damaged cache file is retrained
            path.unlink(missing_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(int(seed))
    y_all = torch.from_numpy(labels_np)
    emb_dim = tail.fc.out_features
    head = losses.make_head(loss, emb_dim, n_classes, **head_kw)
    dev = torch.device(device) if device is not None else features.device
    if head_init == "centroids":
        with torch.no_grad():
            e = torch.from_numpy(embed_tail(tail, features, normalize=True))
            cent = torch.zeros(n_classes, emb_dim).index_add_(0, y_all, e)
            head.weight.copy_(torch.nn.functional.normalize(cent, dim=1))
    tail, head, y_all = tail.to(dev), head.to(dev), y_all.to(dev)
    features = features.to(dev)
    aug_features = aug_features.to(dev) if aug_features is not None else None
    params = list(tail.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    n = len(features)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    tail.train()
    last = []
    for ep in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue
            # drawn in every arm, so a fine-tune and its control (aug_p = 0) see the same batches
            swap = (torch.rand(len(idx), generator=gen) < aug_p).to(dev)
            idx = idx.to(dev)
            x = features[idx].float()
            if aug_features is not None and aug_p > 0:
                if swap.any():
                    x[swap] = aug_features[idx[swap]].float()
            out = head(tail(x), y_all[idx])
            opt.zero_grad(set_to_none=True)
            out.backward()
            opt.step()
            sched.step()
            if ep == epochs - 1:
                last.append(float(out.detach()))
    final = float(np.mean(last)) if last else float("nan")
    tail = tail.cpu().eval()
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"tail": tail.state_dict(), "final_loss": final}, tmp)
        tmp.replace(path)
    return tail, {"final_loss": final, "loaded": False, "path": str(path)}


def train_network(model: nn.Module, faceset: Any, loss: str, *, seed: int = 0, epochs: int = 4,
                  batch_size: int = 128, lr: float = 0.01, weight_decay: float = 5e-4, max_steps: int | None = None,
                  device: Any = None, cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The *whole* network trained with loss family ``loss``: G3's full-network comparison (``gpu`` profile).

    A copy of the pretrained ``model`` (a MobileFaceNet) gets its tail (GDC, FC, embedding BN) re-initialised
    as in :func:`train_tail` with the same ``seed``, then **every** layer is trained by the loss on ``faceset``
    (:func:`facestudy.train.fit`: SGD, cosine schedule, random horizontal flips). Where the heads show what the
    loss does to the last layers, this shows what it does when it can also reshape the features underneath.
    Checkpointed under ``<cache>/geometry/networks`` keyed by every input (a killed run resumes, a finished one
    loads). Returns (network in eval mode on the CPU, info with ``final_loss`` and ``path``).
    """
    from .. import losses
    from ..eval import faceset_hash
    from ..train import checkpoint_path, fit, random_hflip

    if loss not in FAMILIES:
        raise ParameterError(f"unknown loss family {loss!r}; valid: {', '.join(FAMILIES)}")
    labels_np = np.asarray(faceset.labels, dtype=np.int64)
    if len(labels_np) == 0 or (labels_np < 0).any():
        raise ParameterError("train_network needs a face set with labels >= 0 (relabel it first)")
    for part in ("gdc", "fc", "emb_bn"):
        if not hasattr(model, part):
            raise ParameterError(f"train_network needs a MobileFaceNet-like model with a {part!r} tail part")
    net = copy.deepcopy(model).cpu()
    reset_tail(nn.ModuleList([net.gdc, net.fc, net.emb_bn]), seed)
    head = losses.make_head(loss, net.fc.out_features, int(labels_np.max()) + 1)
    spec = ("net-v1", loss, module_digest(model), seed, epochs, batch_size, lr, weight_decay, max_steps,
            f"{faceset.name}-{faceset_hash(faceset)}")
    path = checkpoint_path("geometry/networks", *spec)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
    hist = fit(net, head, faceset, epochs=epochs, batch_size=min(batch_size, len(faceset)), lr=lr,
               device=device if device is not None else "cpu", schedule="cosine", optimizer="sgd",
               weight_decay=weight_decay, augment=random_hflip, checkpoint=path if cache else None, seed=seed,
               progress=False, max_steps=max_steps)
    steps = hist.to_frame()
    final = float(steps["loss"].tail(10).mean()) if len(steps) and "loss" in steps else float("nan")
    return net.cpu().eval(), {"final_loss": final, "path": str(path)}
