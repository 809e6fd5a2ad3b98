"""Chapter 2 (UIFace) glue: training data + identity contexts, the cached generator, synthetic identities,
per-mode generation and metrics, and the downstream face-recognition study on real LFW.

Everything heavy is imported from the shared layers (``facestudy.data``, ``facestudy.faceworld``,
``facestudy.models``, ``facestudy.losses``, ``facestudy.train``, ``facestudy.eval``); this module only
arranges them for the chapter. Sizes come from the chapter's profile (``cfg``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..errors import DataError
from . import metrics as M
from .model import GeneratorConfig, UIFaceGenerator, images_to_model
from .sampling import SamplerConfig, SampleResult, sample
from .train import train_diffusion

# The five sampling rows of the ablation (Tables 1-2 analogue): name -> SamplerConfig overrides
ABLATION: dict[str, dict[str, Any]] = {
    "baseline": {"mode": "baseline"},
    "+2-stage fixed": {"mode": "two_stage"},
    "+2-stage adaptive": {"mode": "adaptive"},
    "+attn": {"mode": "baseline", "inject": True},
    "+adaptive+attn": {"mode": "adaptive", "inject": True},
}


@dataclass
class TrainingData:
    """Aligned training faces, their identity labels and real-FR identity embeddings (chapter 2)."""

    faceset: Any  # facestudy.data.FaceSet at 112 px
    images: torch.Tensor  # float NCHW in [-1, 1] at the generator's size
    identity: torch.Tensor  # (N, D) L2-normalised embeddings of the real FR model
    source: str  # "celeba_id299" | "faceworld"


def face_recognizer(run=None):
    """The real MobileFaceNet (MS1M) when its weights are present, else an untrained one (noted)."""
    from .. import models

    try:
        return models.pretrained("mobilefacenet-ms1m"), True
    except DataError as exc:
        if run is not None:
            run.note(f"MobileFaceNet-MS1M weights absent ({exc}); identity contexts come from an UNTRAINED "
                     f"MobileFaceNet, so identity numbers below are meaningless")
        torch.manual_seed(0)
        return models.create("mobilefacenet"), False


def training_data(cfg, fr, run=None, seed: int = 0) -> TrainingData:
    """CelebA-id299 (aligned real faces) when available, else the synthetic world; contexts cached."""
    from .. import data, faceworld
    from .. import eval as fseval

    if data.available("celeba_id299"):
        fs = data.load("celeba_id299", limit=cfg.train_limit or None)
        rng = np.random.default_rng(seed)
        keep = []
        for lab in np.unique(fs.labels):
            idx = np.flatnonzero(fs.labels == lab)
            keep.extend(rng.permutation(idx)[: cfg.train_per_identity])
        keep = np.sort(np.asarray(keep))[: cfg.train_images]
        fs = fs.subset(keep).relabel()
        source = "celeba_id299"
    else:
        if run is not None:
            run.note("CelebA-id299 is absent: the generator trains on the synthetic world (faceworld)")
        n_ids = max(2, cfg.train_images // cfg.train_per_identity)
        fs = faceworld.make_faceset(n_ids, cfg.train_per_identity, seed=seed, size=112)
        source = "faceworld"
    emb = fseval.embed_cached(fr, fs)
    return TrainingData(faceset=fs, images=images_to_model(fs.images, cfg.image_size), identity=emb.float(),
                        source=source)


def require_paper_files(cfg) -> list[Path]:
    """The ``paper`` profile samples from a user-supplied UIFace UNet + VQ-f4 autoencoder (§2.1); stop at once
    with a :class:`DataError` naming each missing file and where to put it."""
    from .. import data

    roots = [Path(r) for r in data.roots()] or [Path(".")]
    found, missing = [], []
    for rel in (cfg.generator_checkpoint, cfg.autoencoder_checkpoint):
        hits = [r / rel for r in roots if (r / rel).exists()]
        (found if hits else missing).append(hits[0] if hits else rel)
    if missing:
        raise DataError(
            "profile 'paper' needs the official UIFace checkpoints, which are not redistributed: missing "
            + ", ".join(str(m) for m in missing) + f". Download the UIFace UNet and the LDM VQ-f4 autoencoder "
            f"(Tencent/TFace generation/uiface README) and put them at <data root>/{cfg.generator_checkpoint} "
            f"and <data root>/{cfg.autoencoder_checkpoint} (data roots: {', '.join(map(str, roots))}); "
            "or run profile 'default' / 'gpu', which train a pixel-space generator here.")
    return found


def generator_config(cfg) -> GeneratorConfig:
    return GeneratorConfig(image_size=cfg.image_size, embed_dim=cfg.embed_dim, context_dim=cfg.context_dim,
                           n_tokens=cfg.n_tokens, token_dim=cfg.token_dim, channels=tuple(cfg.unet_channels),
                           attn_levels=tuple(cfg.attn_levels), head_dim=cfg.head_dim, norm_groups=cfg.norm_groups,
                           cpd=cfg.cpd, p_empty=cfg.p_empty, prediction=cfg.prediction)


def train_generator(cfg, td: TrainingData, device, seed: int = 0, checkpoint_dir: str | Path | None = None):
    """Build and train (or resume / reload) the generator; returns (sampling model, history, checkpoint path)."""
    from .. import data
    from .. import eval as fseval

    gcfg = generator_config(cfg)
    key = json.dumps({"g": gcfg.__dict__, "steps": cfg.train_steps, "bs": cfg.train_batch, "lr": cfg.lr,
                      "lr_schedule": cfg.lr_schedule, "warmup": cfg.lr_warmup, "seed": seed,
                      "data": fseval.faceset_hash(td.faceset), "size": cfg.image_size},
                     sort_keys=True, default=str)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    folder = Path(checkpoint_dir) if checkpoint_dir else data.cache_dir() / "uiface"
    path = folder / f"generator-{digest}.pt"
    torch.manual_seed(seed)
    gen = UIFaceGenerator(gcfg)
    ema, hist = train_diffusion(gen, td.images, td.identity, steps=cfg.train_steps, batch_size=cfg.train_batch,
                                lr=cfg.lr, device=device, seed=seed, checkpoint=path,
                                lr_schedule=cfg.lr_schedule, warmup=cfg.lr_warmup,
                                checkpoint_every=max(50, cfg.train_steps // 4))
    model = ema.model if cfg.use_ema else gen
    return model.eval(), hist, path


def sampler(cfg, **overrides: Any) -> SamplerConfig:
    """A :class:`SamplerConfig` with the profile's steps, guidance, t0 and th, plus ``overrides``."""
    kw = {"steps": cfg.ddim_steps, "guidance": cfg.guidance, "t0": cfg.t0, "th": cfg.th}
    kw.update(overrides)
    return SamplerConfig(**kw)


def synthetic_identities(gen, fr, cfg, device, seed: int = 0) -> dict[str, Any]:
    """§2.5: sample faces with the empty context, embed them with the real FR model, keep distinct ones.

    Greedy cosine filter at ``cfg.filter_threshold``; if it keeps fewer than ``cfg.n_identities``, the
    remainder is chosen by farthest-point selection (reported as ``fallback``).
    """
    n_cand = cfg.n_candidates
    res = sample(gen, torch.zeros(n_cand, cfg.embed_dim), sampler(cfg, mode="two_stage", t0=-1), seed=seed + 7,
                 batch_size=cfg.sample_batch, device=device)
    emb = fr.embed(res.images.numpy())
    kept = M.filter_contexts(emb, cfg.filter_threshold)
    fallback = len(kept) < cfg.n_identities
    chosen = M.farthest_point(emb, cfg.n_identities) if fallback else kept[: cfg.n_identities]
    sims = (emb[chosen] @ emb[chosen].T).numpy()
    off = sims[~np.eye(len(chosen), dtype=bool)]
    return {"contexts": emb[chosen], "candidates": res.images, "kept": len(kept), "fallback": fallback,
            "max_offdiag": float(off.max()) if len(off) else float("nan"), "chosen": chosen}


def generate(gen, contexts: torch.Tensor, n_per_identity: int, scfg: SamplerConfig, device, *, seed: int = 0,
             batch_size: int = 64, keep_maps: int = 0, name: str = "synthetic"):
    """``n_per_identity`` samples of every context; returns (FaceSet at the generator's size, SampleResult)."""
    from ..data import FaceSet

    ident = contexts.repeat_interleave(n_per_identity, 0)
    labels = np.repeat(np.arange(len(contexts)), n_per_identity)
    res = sample(gen, ident, scfg, seed=seed, batch_size=batch_size, keep_maps=keep_maps, device=device)
    meta = pd.DataFrame({"identity": [f"syn{k:05d}" for k in labels], "t0": res.t0})
    return FaceSet(images=res.images.numpy(), labels=labels, meta=meta, name=name, source="synthetic"), res


def evaluate_set(fs, fr, real_emb: torch.Tensor, cfg, res: SampleResult | None = None, seed: int = 0) -> dict:
    """Identity consistency, diversity (LPIPS substitute + pixels), Improved Recall and cost of one set."""
    emb = fr.embed(fs.images)
    sim = M.intra_class_similarity(emb, fs.labels)
    gen_s, imp_s = M.genuine_impostor(emb, fs.labels, seed=seed)
    feats = fr.features(fs.images, list(cfg.diversity_layers))
    feats = {k: F.avg_pool2d(v, 2) if v.ndim == 4 and v.shape[-1] > 16 else v for k, v in feats.items()}
    div = M.feature_diversity(feats, fs.labels, seed=seed)
    pix = M.pixel_diversity(fs.images, fs.labels)
    recall = M.improved_recall(real_emb, emb, k=cfg.recall_k) if len(emb) > cfg.recall_k else float("nan")
    out = {"identity_sim": float(sim.mean()), "identity_sim_per_id": sim, "genuine": gen_s, "impostor": imp_s,
           "diversity_fr_lpips": float(div.mean()), "diversity_per_id": div, "pixel_diversity": float(pix.mean()),
           "recall": recall, "embeddings": emb}
    if res is not None:
        out.update(seconds_per_image=res.seconds_per_image, unet_evals_per_image=res.unet_evals / len(fs),
                   t0=res.t0)
    return out


def train_fr(fs, cfg, device, seed: int = 0):
    """Downstream: the same small FR backbone trained on one face set at ``cfg.fr_size`` px (chapter 2)."""
    from .. import losses, models, train

    torch.manual_seed(seed)
    model = models.create("smallcnn", input_size=cfg.fr_size, stages=cfg.fr_stages, width=cfg.fr_width,
                          embedding_dim=cfg.fr_dim)
    head = losses.make_head(cfg.fr_head, cfg.fr_dim, int(fs.labels.max()) + 1)
    hist = train.fit(model, head, fs, epochs=cfg.fr_epochs, batch_size=min(cfg.fr_batch, len(fs)), lr=cfg.fr_lr,
                     device=device, seed=seed, progress=False, warmup=0)
    return model.eval(), hist


def real_fr_set(td: TrainingData, n_identities: int, n_per_identity: int, size: int, seed: int = 0):
    """The "trained on real faces" row: real training faces with the synthetic sets' shape, at ``size`` px."""
    from ..data import FaceSet
    from .model import resize_uint8

    fs = td.faceset
    rng = np.random.default_rng(seed)
    counts = np.bincount(fs.labels)
    ids = [i for i in rng.permutation(len(counts)) if counts[i] >= n_per_identity][:n_identities]
    idx = np.concatenate([rng.permutation(np.flatnonzero(fs.labels == i))[:n_per_identity] for i in ids])
    sub = fs.subset(idx).relabel()
    return FaceSet(images=resize_uint8(sub.images, size).numpy(), labels=sub.labels, meta=sub.meta,
                   name=f"{fs.name}-real{size}", source="real")
