"""Training arms a chapter and a launched run share (``facestudy train``, issue 20; book page "Running").

An *arm* is one trained model of a chapter: its network, head, training faces, :func:`facestudy.train.fit`
settings and the cache key (:func:`facestudy.train.checkpoint_path`) that names the finished weights. The
notebook builds the arm and calls :meth:`Arm.fit`; ``facestudy train <chapter> <arm> --profile P`` (alone or
under ``torchrun --nproc-per-node N``) builds the *same* arm from the same profile table, trains it, and
leaves the checkpoint under the same key, so the notebook then loads it instead of training.

The model's initial weights are drawn from ``seed`` in a forked RNG, so the key determines the weights and
building an arm leaves the caller's random state untouched.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ParameterError


@dataclass
class Arm:
    """One trainable model of a chapter: what :func:`facestudy.train.fit` needs, plus its cache key."""

    chapter: str
    name: str
    model: torch.nn.Module
    head: torch.nn.Module | None
    faceset: Any
    checkpoint: Path
    fit_kwargs: dict[str, Any] = field(default_factory=dict)

    def fit(self, **kw: Any):
        """Train (or resume, or load when finished) into :attr:`checkpoint`; ``kw`` sets what does not shape
        the weights (``device``, ``progress``, ``callbacks``, ``checkpoint_every``), never the recipe (that
        would break the cache key)."""
        from . import train

        recipe = {k for k in kw if k in self.fit_kwargs}
        if recipe:
            raise ParameterError(f"arm {self.chapter}/{self.name}: {', '.join(sorted(recipe))} belong to the "
                                 f"recipe (and its cache key); change them in the profile table instead")
        return train.fit(self.model, self.head, self.faceset, checkpoint=self.checkpoint,
                         **{**self.fit_kwargs, **kw})


def _seeded(seed: int, make: Callable[[], Any]) -> Any:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def faceworld_fr(cfg: Any, seed: int = 0) -> Arm:
    """Chapter 00a's world-trained FR model: a SmallCNN with an ArcFace head on ``fr_train_ids`` synthetic
    identities x ``fr_per_id`` renders (the ``fr_*`` settings of the profile table)."""
    from . import faceworld as fw
    from . import losses, models, train
    from .eval import faceset_hash

    faces = fw.make_faceset(cfg.fr_train_ids, cfg.fr_per_id, seed=seed, size=cfg.fr_size, nuisance="default")
    model, head = _seeded(seed, lambda: (
        models.create("smallcnn", input_size=cfg.fr_size, width=cfg.fr_width, stages=4,
                      embedding_dim=cfg.fr_embedding_dim),
        losses.make_head("arcface", cfg.fr_embedding_dim, cfg.fr_train_ids, s=cfg.fr_scale, m2=cfg.fr_margin)))
    # cached by recipe + training images: a re-run loads the trained model instead of training again
    ckpt = train.checkpoint_path("faceworld", "smallcnn-arcface",
                                 sorted((k, v) for k, v in cfg.items() if k.startswith("fr_")),
                                 faceset_hash(faces), seed)
    return Arm("00a_faceworld", "world-fr", model, head, faces, ckpt,
               dict(epochs=cfg.fr_epochs, batch_size=cfg.fr_batch_size, lr=cfg.fr_lr, warmup=1, seed=seed,
                    augment=train.random_hflip if cfg.fr_flip else None))


#: (chapter id, arm name) -> builder(cfg, seed) -> Arm
ARMS: dict[tuple[str, str], Callable[[Any, int], Arm]] = {
    ("00a_faceworld", "world-fr"): faceworld_fr,
}


def _uiface_generator(cfg: Any, seed: int = 0, device: str = "cpu", progress: bool = True) -> str:
    """Chapter 2's cold cost: its face autoencoder and ID-conditioned latent UNet (not a train.fit arm)."""
    from .runtime import resolve_device
    from .uiface import pipeline

    t = pipeline.prepare_generator(cfg, seed=seed, device=str(resolve_device(device)), progress=progress)
    parts = [f"generator {t.path} ({t.hist.steps} steps)"]
    if t.ae_path is not None:
        parts.insert(0, f"autoencoder {t.ae_path} ({t.ae_hist.steps} steps)")
    return "; ".join(parts) + f"; trained {t.cold_seconds:.0f} s in this call"


def _facemint_saes(cfg: Any, seed: int = 0, device: str = "cpu", progress: bool = True) -> str:
    """Chapter 4's cold cost: the templates of every real face it studies (all ~39 k at default, embedded into
    the shared embedding cache), then every SAE of its template sections (the expansion sweep, the sparsity
    grid and F1's large dictionaries over the SAE seeds, into the SAE cache). The chapter's own calls with the
    same settings and seed then load them."""
    import time

    from tqdm.auto import tqdm

    from .interpret import analysis
    from .runtime import resolve_device

    dev = resolve_device(device)
    model = analysis.study_model(cfg.model, cfg.checkpoint).to(dev).eval()
    t = time.perf_counter()
    faces = analysis.study_faces(cfg, seed=seed, note=lambda msg: print(msg, flush=True))
    t_load = time.perf_counter() - t
    bar = tqdm(total=len(faces), desc="facemint templates", unit="face", mininterval=2.0, disable=not progress,
               delay=1.0)  # no bar when they come from the cache
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        bar.update(n)

    t = time.perf_counter()
    try:
        X = analysis.templates(model, [faces], threads=None, progress=tick)
    finally:
        bar.close()
    t_emb = time.perf_counter() - t
    split = analysis.study_split(cfg, faces, seed=seed)
    seeds = [seed + i for i in range(cfg.sae_seeds)]
    sbar = tqdm(total=analysis.n_study_saes(cfg, X.shape[1], len(seeds)), desc="facemint SAEs", unit="SAE",
                disable=not progress)
    try:
        out = analysis.train_study_saes(cfg, X[split["train"]], X[split["discovery"]], X[split["validation"]],
                                        seeds, device=str(dev), progress=sbar.update)
    finally:
        sbar.close()
    return (f"{len(faces)} templates ({faces.source}; read in {t_load:.0f} s, embedded in {t_emb:.0f} s, "
            f"{'computed' if done[0] else 'from the cache'}); SAEs: sweep {out['sweep_s']:.0f} s, grid "
            f"{out['grid_s']:.0f} s, F1 {out['f1_s']:.0f} s (0 s when cached)")


#: (chapter id, arm name) -> stage(cfg, seed, device, progress) -> summary: models trained by their own loop
STAGES: dict[tuple[str, str], Callable[..., str]] = {
    ("02_uiface", "generator"): _uiface_generator,
    ("04_facemint", "saes"): _facemint_saes,
}


def names() -> list[str]:
    return [f"{c} {a}" for c, a in [*ARMS, *STAGES]]


def stage(chapter: str, arm: str) -> tuple[str, Callable[..., str]] | None:
    """The (chapter id, stage) when ``chapter`` (an id or unique prefix) + ``arm`` name a training stage."""
    ids = sorted({c for c, _ in STAGES})
    hits = [c for c in ids if c == chapter] or [c for c in ids if c.startswith(chapter)]
    if len(hits) == 1 and (hits[0], arm) in STAGES:
        return hits[0], STAGES[(hits[0], arm)]
    return None


def build(chapter: str, arm: str, profile: str = "default", seed: int = 0, **overrides: Any) -> Arm:
    """The arm ``arm`` of ``chapter`` (an id or unique prefix) at ``profile`` with table ``overrides``."""
    from . import profiles

    ids = sorted({c for c, _ in ARMS})
    hits = [c for c in ids if c == chapter] or [c for c in ids if c.startswith(chapter)]
    if len(hits) != 1:
        raise ParameterError(f"no trainable arm for chapter {chapter!r}; arms: {'; '.join(names())}")
    if (hits[0], arm) not in ARMS:
        raise ParameterError(f"chapter {hits[0]} has no arm {arm!r}; arms: {'; '.join(names())}")
    cfg = profiles.resolve(hits[0], profile, **overrides)
    return ARMS[(hits[0], arm)](cfg, seed)
