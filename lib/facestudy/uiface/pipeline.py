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

from ..errors import DataError, ParameterError
from . import metrics as M
from .autoencoder import AutoencoderConfig, AutoencoderHistory, FaceAutoencoder, train_autoencoder
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
    """Aligned training faces, their identity labels and real-FR identity embeddings (chapter 2).

    ``heldout`` holds the faces of ``cfg.gate_identities`` real identities that neither the autoencoder nor
    the generator sees: the competence gate conditions on them to test identities the model never met.
    """

    faceset: Any  # facestudy.data.FaceSet at 112 px
    images: torch.Tensor  # float NCHW in [-1, 1] at the generator's size
    identity: torch.Tensor  # (N, D) L2-normalised embeddings of the real FR model
    source: str  # "celeba_id299+celeba10k" | "celeba_id299" | "faceworld" ...
    heldout: Any = None  # FaceSet of the held-out identities (112 px), or None
    heldout_identity: torch.Tensor | None = None  # their embeddings


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
    """The real aligned faces of ``cfg.train_sets`` that are present (CelebA-id299, CelebA-10k), else the
    synthetic world; ``cfg.gate_identities`` CelebA-id299 identities are held out of every set (by their CelebA
    identity number); contexts are cached.

    Per set at most ``cfg.train_limit`` images are read (0 = all) and at most ``cfg.train_per_identity`` kept
    per identity (0 = all); then at most ``cfg.train_images`` in all (0 = all), drawn with ``seed``.
    """
    from .. import data, faceworld
    from .. import eval as fseval

    rng = np.random.default_rng(seed)
    loaded = {name: data.load(name, limit=cfg.train_limit or None) for name in cfg.train_sets
              if data.available(name)}
    heldout, out_ids = None, set()
    if "celeba_id299" in loaded and cfg.gate_identities:
        fs = loaded["celeba_id299"]
        labs, counts = np.unique(fs.labels, return_counts=True)
        out = rng.permutation(labs[counts >= 2])[: cfg.gate_identities]
        is_out = np.isin(fs.labels, out)
        heldout = fs.subset(np.flatnonzero(is_out)).relabel()
        out_ids = set(heldout.meta["identity"].astype(str))
    parts, names = [], []
    for name, fs in loaded.items():
        # a held-out person is held out of every set: 167 of CelebA-id299's identities also have photos in
        # CelebA-10k (the same CelebA identity numbers)
        if out_ids and "identity" in fs.meta.columns:
            fs = fs.subset(np.flatnonzero(~fs.meta["identity"].astype(str).isin(out_ids).to_numpy())).relabel()
        if cfg.train_per_identity:
            keep = []
            for lab in np.unique(fs.labels):
                idx = np.flatnonzero(fs.labels == lab)
                keep.extend(rng.permutation(idx)[: cfg.train_per_identity])
            fs = fs.subset(np.sort(np.asarray(keep, dtype=np.int64))).relabel()
        parts.append(fs)
        names.append(name)
    if parts:
        fs = parts[0] if len(parts) == 1 else data.concat(parts, name="+".join(names))
        if cfg.train_images and len(fs) > cfg.train_images:
            fs = fs.subset(np.sort(rng.permutation(len(fs))[: cfg.train_images])).relabel()
        source = "+".join(names)
    else:
        if run is not None:
            run.note(f"none of {', '.join(cfg.train_sets)} is present: the generator trains on the synthetic "
                     f"world (faceworld)")
        per = cfg.train_per_identity or 8
        n_ids = max(2, (cfg.train_images or 2000) // per)
        fs = faceworld.make_faceset(n_ids, per, seed=seed, size=112)
        source = "faceworld"
    emb = fseval.embed_cached(fr, fs)
    h_emb = fseval.embed_cached(fr, heldout) if heldout is not None and len(heldout) else None
    return TrainingData(faceset=fs, images=images_to_model(fs.images, cfg.image_size), identity=emb.float(),
                        source=source, heldout=heldout if h_emb is not None else None,
                        heldout_identity=None if h_emb is None else h_emb.float())


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
                           cpd=cfg.cpd, p_empty=cfg.p_empty, prediction=cfg.prediction,
                           latent_channels=cfg.latent_channels)


@dataclass
class TrainedGenerator:
    """What :func:`train_generator` returns: the sampling model (EMA weights, decoder attached for a latent
    generator), the diffusion history, the checkpoint path, and the autoencoder's model / history / path."""

    model: UIFaceGenerator
    hist: Any  # DiffusionHistory
    path: Path
    ae: FaceAutoencoder | None = None
    ae_hist: AutoencoderHistory | None = None
    ae_path: Path | None = None

    @property
    def cold_seconds(self) -> float:
        """Training seconds spent in *this* call (0 when both stages were loaded from the cache)."""
        return float(self.hist.seconds) + float(self.ae_hist.seconds if self.ae_hist is not None else 0.0)


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _bar(desc: str, total: int, enabled: bool):
    """A tqdm progress callback ``(step, steps, loss)`` or None (the prepare stage shows training)."""
    if not enabled or total <= 0:
        return None, None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="step", mininterval=2.0, delay=1.0)  # no bar for a cached model

    def update(step: int, steps: int, loss: float) -> None:
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)

    return update, bar


def train_autoencoder_cached(cfg, td: TrainingData, seed: int = 0, folder: str | Path | None = None,
                             progress: bool = False) -> tuple[FaceAutoencoder, AutoencoderHistory, Path]:
    """The chapter's f4 face autoencoder, trained once on the training faces and cached (resumable)."""
    from .. import data
    from .. import eval as fseval

    acfg = AutoencoderConfig(image_size=cfg.image_size, latent_channels=cfg.latent_channels,
                             channels=tuple(cfg.ae_channels), norm_groups=cfg.ae_norm_groups)
    key = {"a": acfg.__dict__, "steps": cfg.ae_steps, "bs": cfg.ae_batch, "lr": cfg.ae_lr, "seed": seed,
           "noise": cfg.ae_latent_noise, "data": fseval.faceset_hash(td.faceset)}
    path = (Path(folder) if folder else data.cache_dir() / "uiface") / f"autoencoder-{_digest(key)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = FaceAutoencoder(acfg)
    update, bar = _bar("uiface autoencoder", cfg.ae_steps, progress)
    try:
        hist = train_autoencoder(ae, td.images, steps=cfg.ae_steps, batch_size=cfg.ae_batch, lr=cfg.ae_lr,
                                 latent_noise=cfg.ae_latent_noise, seed=seed, checkpoint=path,
                                 checkpoint_every=max(50, cfg.ae_steps // 10),
                                 progress=update)
    finally:
        if bar is not None:
            bar.close()
    return ae, hist, path


def train_generator(cfg, td: TrainingData, device, seed: int = 0, checkpoint_dir: str | Path | None = None,
                    progress: bool = False) -> TrainedGenerator:
    """Build and train (or resume / reload) the autoencoder (latent generators) and the generator.

    Both are cached under keys of their recipe and training faces; a latent generator is trained on the
    autoencoder's scaled latents and returned with the decoder attached, so :func:`sample` returns images.
    """
    from .. import data
    from .. import eval as fseval

    gcfg = generator_config(cfg)
    folder = Path(checkpoint_dir) if checkpoint_dir else data.cache_dir() / "uiface"
    ae = ae_hist = ae_path = None
    inputs = td.images
    if gcfg.latent_channels:
        ae, ae_hist, ae_path = train_autoencoder_cached(cfg, td, seed=seed, folder=folder, progress=progress)
        inputs = ae.encode_all(td.images)
    key = {"g": gcfg.__dict__, "steps": cfg.train_steps, "bs": cfg.train_batch, "lr": cfg.lr,
           "lr_schedule": cfg.lr_schedule, "warmup": cfg.lr_warmup, "seed": seed,
           "data": fseval.faceset_hash(td.faceset), "size": cfg.image_size,
           "ae": ae_path.name if ae_path is not None else None}
    path = folder / f"generator-{_digest(key)}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = UIFaceGenerator(gcfg)
    update, bar = _bar("uiface generator", cfg.train_steps, progress)
    try:
        ema, hist = train_diffusion(gen, inputs, td.identity, steps=cfg.train_steps, batch_size=cfg.train_batch,
                                    lr=cfg.lr, device=device, seed=seed, checkpoint=path,
                                    lr_schedule=cfg.lr_schedule, warmup=cfg.lr_warmup,
                                    checkpoint_every=max(50, cfg.train_steps // 10), progress=update)
    finally:
        if bar is not None:
            bar.close()
    model = (ema.model if cfg.use_ema else gen).eval()
    if ae is not None:
        model.attach_autoencoder(ae.to(device))
    return TrainedGenerator(model=model, hist=hist, path=path, ae=ae, ae_hist=ae_hist, ae_path=ae_path)


def prepare_generator(cfg, seed: int = 0, device: str = "cpu", progress: bool = True) -> TrainedGenerator:
    """``facestudy train 02_uiface generator``: the chapter's cold cost (training faces, their contexts, the
    autoencoder, the generator) as an explicit step with progress bars; the chapter then loads the cache."""
    fr, _ = face_recognizer()
    td = training_data(cfg, fr, seed=seed)
    return train_generator(cfg, td, device, seed=seed, progress=progress)


def sampler(cfg, **overrides: Any) -> SamplerConfig:
    """A :class:`SamplerConfig` with the profile's steps, guidance, t0 and th, plus ``overrides``."""
    kw = {"steps": cfg.ddim_steps, "guidance": cfg.guidance, "t0": cfg.t0, "th": cfg.th}
    kw.update(overrides)
    if kw["guidance"] < 0:
        raise ParameterError(f"guidance = {kw['guidance']} means 'tune it': set cfg.guidance to the w that "
                             f"tune_guidance returns (the chapter does), or pass guidance >= 0")
    return SamplerConfig(**kw)


def calibrate_threshold(gen, cfg, device, seed: int = 0, n: int = 64) -> dict[str, Any]:
    """The adaptive rule's threshold th calibrated on *our* network's map change d_t (chapter 2, §2.4).

    The paper's th = 0.005 is a value on its 216 M-parameter UNet's d_t; ours lives on another scale. A pilot
    of ``n`` samples runs stage 1 only (empty context at every step, maps recorded) and th is the
    ``cfg.th_quantile`` quantile of their d_t over the stage-1 steps (t >= t0, the first recorded change
    excluded). Then every sample crosses th at least once on its own curve, and the rule switches it where its
    cross-attention map is quietest — relative to this network, as the paper's rule is relative to its own.
    With so few DDIM steps that no stage-1 change is recorded, every recorded change is used (``every_step``).
    Returns ``th``, the pilot's ``d`` (n, steps), ``timesteps`` and ``every_step``.
    """
    res = sample(gen, torch.zeros(n, cfg.embed_dim), sampler(cfg, mode="two_stage", t0=-1, record_maps=True),
                 seed=seed + 5, batch_size=cfg.sample_batch, device=device)
    ts = np.asarray(res.timesteps)
    first = 2 if (ts[2:] >= cfg.t0).any() else 1  # d at index 0 is undefined; index 1 is the tiny first change
    vals = res.d[:, (ts >= cfg.t0) & (np.arange(len(ts)) >= first)]
    vals = vals[np.isfinite(vals)]
    every_step = not len(vals)  # a few DDIM steps may leave no stage-1 change: use every recorded one
    if every_step:
        vals = res.d[np.isfinite(res.d)]
    if not len(vals):
        raise ValueError(f"calibrate_threshold: no stage-1 map change was recorded ({cfg.ddim_steps} DDIM steps, "
                         f"t0 = {cfg.t0}); use more ddim_steps or set th >= 0")
    return {"th": float(np.quantile(vals, cfg.th_quantile)), "d": res.d, "timesteps": res.timesteps,
            "every_step": every_step}


def tuning_contexts(fr, n_identities: int, size: int, seed: int = 0) -> dict[str, Any] | None:
    """Tuning people for the sampler (chapter 2): one LFW face each of ``n_identities`` people, embedded at
    112 px like every training context (``contexts``), and the embeddings of up to 200 *other* LFW faces at the
    generator's ``size`` (``reference``, for a Fréchet distance). LFW is in neither the generator's training
    faces nor the competence gate, so a setting chosen on it is not chosen on the gate's people. None when LFW
    is absent."""
    from .. import data
    from .. import eval as fseval

    if not n_identities or not data.available("lfw"):
        return None
    fs = data.load("lfw", limit=min(len(data.index("lfw")), 20 * n_identities), seed=seed)
    _, first = np.unique(fs.labels, return_index=True)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(first)[:n_identities])
    if len(pick) < 2:
        return None
    rest = np.sort(rng.permutation(np.setdiff1d(np.arange(len(fs)), pick))[:200])
    return {"contexts": fseval.embed_cached(fr, fs.subset(pick).relabel()).float(),
            "reference": fr.embed(lowres(fs.subset(rest), size).images) if len(rest) >= 2 else None,
            "who": f"LFW ({len(pick)} people)"}


def face_probability(images) -> np.ndarray | None:
    """How face-like each image is: the MTCNN O-Net face probability of the whole image (chapter 4's F5 measure,
    :func:`facestudy.interpret.actmax.faceness`). None when the MTCNN weights are absent; damaged weights raise."""
    from .. import data
    from ..data.datasets import _detector  # the process's one MTCNN (the data layer's aligner)
    from ..interpret.actmax import faceness

    if not data.available("mtcnn"):
        return None
    return np.asarray(faceness(np.asarray(images), _detector())["onet_prob"], dtype=float)


def context_scores(emb: torch.Tensor, ctx: torch.Tensor, labels: np.ndarray) -> dict[str, np.ndarray | float]:
    """How much of its context each embedding carries: the cosine to its own context (``own``, per row), the mean
    cosine to the other contexts (``other``, per row) and the fraction of rows whose own context is the nearest
    (``rank1``). ``emb`` and ``ctx`` are L2-normalised; ``labels`` index ``ctx``."""
    labels = np.asarray(labels)
    cos = (emb @ ctx.T).numpy()
    own = cos[np.arange(len(labels)), labels]
    other = (cos.sum(1) - own) / max(1, len(ctx) - 1)
    return {"own": own, "other": other, "rank1": float((cos.argmax(1) == labels).mean())}


def choose_guidance(aucs: dict[float, float], target: float) -> float:
    """The smallest guidance w whose tuning AUC reaches ``target``; if none does, the w with the highest AUC.

    Guidance trades sample quality for identity: the smallest w that carries enough identity distorts least.
    """
    if not aucs:
        raise ValueError("choose_guidance needs at least one (w, AUC)")
    passing = [w for w, a in sorted(aucs.items()) if np.isfinite(a) and a >= target]
    if passing:
        return float(passing[0])
    finite = {w: a for w, a in aucs.items() if np.isfinite(a)}
    if not finite:
        return float(min(aucs))
    return float(max(finite, key=lambda w: (finite[w], -w)))


def tune_guidance(gen, fr, cfg, device, seed: int = 0) -> dict[str, Any]:
    """Chapter 2: the classifier-free guidance w of every sampler, chosen on tuning identities.

    ``cfg.guidance >= 0`` fixes w (the paper's w = 1: the ``paper`` profile). Else, for each w of
    ``cfg.guidance_grid``, ``cfg.guidance_per_identity`` baseline samples of ``cfg.guidance_identities`` LFW
    people are drawn and embedded, and w is :func:`choose_guidance` of their genuine-vs-impostor AUCs against
    ``cfg.gate_auc``. Without LFW, w = the grid's first value (noted in ``source``). Returns ``w``, ``source``
    and ``table`` (w, AUC, own-minus-other context cosine, rank-1 rate, Fréchet distance to other real LFW faces
    at this resolution, fraction of samples the O-Net takes for faces), empty when nothing was tuned.
    """
    empty = pd.DataFrame(columns=["w", "auc", "own_minus_other", "rank1", "fd", "faces"])
    if cfg.guidance >= 0:
        return {"w": float(cfg.guidance), "source": "set by the profile", "table": empty}
    grid = [float(w) for w in cfg.guidance_grid]
    if not grid or min(grid) < 0:
        raise ParameterError(f"guidance_grid must list guidance values >= 0 when guidance < 0 (got "
                             f"{cfg.guidance_grid}); or set guidance >= 0 to fix w")
    tuned = tuning_contexts(fr, cfg.guidance_identities, cfg.image_size, seed=seed)
    if tuned is None:
        return {"w": grid[0], "source": "the grid's first value (no LFW to tune on)", "table": empty}
    ctx, ref, who = tuned["contexts"], tuned["reference"], tuned["who"]
    k = cfg.guidance_per_identity
    labels = np.repeat(np.arange(len(ctx)), k)
    rows = []
    for w in grid:
        res = sample(gen, ctx.repeat_interleave(k, 0), sampler(cfg, mode="baseline", guidance=w), seed=seed + 13,
                     batch_size=cfg.sample_batch, device=device)
        emb = fr.embed(res.images.numpy())
        sc = context_scores(emb, ctx, labels)
        face = face_probability(res.images.numpy())
        rows.append({"w": w, "auc": verification_auc(emb, labels),
                     "own_minus_other": float((sc["own"] - sc["other"]).mean()), "rank1": sc["rank1"],
                     "fd": frechet_distance(emb.numpy(), ref.numpy()) if ref is not None else float("nan"),
                     "faces": float((face > 0.5).mean()) if face is not None else float("nan")})
    table = pd.DataFrame(rows)
    w = choose_guidance(dict(zip(table["w"], table["auc"], strict=True)), cfg.gate_auc)
    return {"w": w, "source": f"tuned on {who}, {k} samples each", "table": table}


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


def real_fr_set(td: TrainingData, n_identities: int, n_per_identity: int, size: int, seed: int = 0):
    """The "trained on real faces" row: real training faces with the synthetic sets' shape, at ``size`` px."""
    fs = td.faceset
    rng = np.random.default_rng(seed)
    counts = np.bincount(fs.labels)
    ids = [i for i in rng.permutation(len(counts)) if counts[i] >= n_per_identity][:n_identities]
    idx = np.concatenate([rng.permutation(np.flatnonzero(fs.labels == i))[:n_per_identity] for i in ids])
    return lowres(fs.subset(idx).relabel(), size, name=f"{fs.name}-real{size}")


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (FID's formula, here on FR
    embeddings: an "FID in face-recognition feature space"; chapter 2's competence gate)."""
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs two (N >= 2, D) arrays of the same D; got {a.shape}, {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(ca @ cb)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as the reference FID code does
        eps = 1e-6 * np.eye(len(ca))
        covmean = linalg.sqrtm((ca + eps) @ (cb + eps))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def verification_auc(emb, labels) -> float:
    """AUC of same-identity vs different-identity cosine over every pair of ``emb`` (N, D)."""
    from sklearn.metrics import roc_auc_score

    e = torch.as_tensor(emb).float()
    lab = np.asarray(labels)
    s = (e @ e.T).numpy()
    iu = np.triu_indices(len(lab), 1)
    same = (lab[:, None] == lab[None])[iu]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, s[iu]))


def competence_gate(gen, fr, td: TrainingData, cfg, device, seed: int = 0) -> dict:
    """Does the generator put its conditioning identity into the faces it draws? (chapter 2, before any claim)

    Conditions on one real face of each held-out identity (never seen in training), draws
    ``cfg.n_per_identity`` samples per context with the baseline sampler, and measures under the real FR model
    at the generator's resolution: the genuine-vs-impostor AUC among generated faces (``auc``; real faces of
    the same identities at this resolution: ``real_auc``), the cosine of each sample to its own context against
    the mean cosine to the other contexts (``own_cos``, ``other_cos``), how often the own context is the nearest
    one (``rank1``; chance = 1 / identities; the same three for the held-out people's other real photos at this
    resolution: ``real_own_cos``, ``real_other_cos``, ``real_rank1``), and the Fréchet distance in FR-embedding
    space to real faces (``fd``; two disjoint real sets at this resolution: ``fd_real``), and the fraction of
    samples / real faces the MTCNN O-Net takes for faces (``faces_frac``, ``real_faces_frac``; probability > 0.5,
    NaN without the MTCNN weights). Returns the numbers and the samples.
    """
    from ..data import FaceSet

    if td.heldout is None or td.heldout_identity is None or td.heldout.n_identities < 2:
        raise DataError("the competence gate needs held-out real identities (gate_identities >= 2 and "
                        "CelebA-id299 present)")
    ho = td.heldout
    first = np.array([np.flatnonzero(ho.labels == k)[0] for k in range(ho.n_identities)])
    ctx = td.heldout_identity[first]
    k = cfg.n_per_identity
    res = sample(gen, ctx.repeat_interleave(k, 0), sampler(cfg, mode="baseline"), seed=seed + 11,
                 batch_size=cfg.sample_batch, device=device)
    labels = np.repeat(np.arange(len(ctx)), k)
    emb = fr.embed(res.images.numpy())
    sc = context_scores(emb, ctx, labels)
    own, other = sc["own"], sc["other"]
    real_small = lowres(ho, cfg.image_size).images
    real_emb = fr.embed(real_small)
    # the yardstick for own/other: the held-out people's *other* real photos at this resolution
    rest = np.setdiff1d(np.arange(len(ho)), first)
    rsc = context_scores(real_emb[rest], ctx, np.asarray(ho.labels)[rest])
    face, rface = face_probability(res.images.numpy()), face_probability(np.asarray(real_small))
    ref_idx = np.random.default_rng(seed).permutation(len(td.faceset))[: max(len(real_emb), len(emb))]
    ref_emb = fr.embed(lowres(td.faceset.subset(np.sort(ref_idx)), cfg.image_size).images)
    fs = FaceSet(images=res.images.numpy(), labels=labels,
                 meta=pd.DataFrame({"identity": [f"heldout{j:04d}" for j in labels]}), name="gate",
                 source="synthetic")
    return {"auc": verification_auc(emb, labels), "real_auc": verification_auc(real_emb, ho.labels),
            "own_cos": float(own.mean()), "other_cos": float(other.mean()),
            "own_minus_other": own - other,
            "rank1": sc["rank1"], "chance": 1.0 / len(ctx),
            "real_own_cos": float(rsc["own"].mean()) if len(rest) else float("nan"),
            "real_other_cos": float(rsc["other"].mean()) if len(rest) else float("nan"),
            "real_rank1": rsc["rank1"] if len(rest) else float("nan"),
            "fd": frechet_distance(emb.numpy(), ref_emb.numpy()),
            "fd_real": frechet_distance(real_emb.numpy(), ref_emb.numpy()),
            "faces_frac": float((face > 0.5).mean()) if face is not None else float("nan"),
            "real_faces_frac": float((rface > 0.5).mean()) if rface is not None else float("nan"),
            "n_identities": len(ctx), "per_identity": k, "faces": fs, "real_faces": real_small,
            "seconds": res.seconds}


def lowres(fs, size: int, name: str | None = None):
    """A FaceSet at ``size`` px (area-downsampled): real faces at the generator's resolution (chapter 2)."""
    from ..data import FaceSet
    from .model import resize_uint8

    return FaceSet(images=resize_uint8(fs.images, size).numpy(), labels=fs.labels, meta=fs.meta,
                   name=name or f"{fs.name}-{size}px", source=fs.source)


def train_tail_fr(fs, fr, cfg, seed: int = 0):
    """Downstream face recognition on a (synthetic or real) face set at CPU cost (chapter 2, U4).

    The real MobileFaceNet's trunk stays frozen (its ``conv_sep`` map of every image is cached once); its tail
    (global depthwise conv + linear + BatchNorm) is **re-initialised** and trained with ArcFace on the set's
    identities (:func:`facestudy.geometry.heads.train_tail`), so two sets differ only in what the tail learns
    from them. Returns the tail.
    """
    from .. import eval as fseval
    from ..eval.trunk import trunk_features
    from ..geometry.heads import train_tail

    feats = trunk_features(fr, fs, "conv_sep")
    tail, _ = train_tail(feats.features, fs.labels, "arcface", init=fr.tail("conv_sep"), reinit=True, seed=seed,
                         epochs=cfg.fr_epochs, batch_size=min(cfg.fr_batch, len(fs)), lr=cfg.fr_lr,
                         features_key=f"uiface-{fseval.faceset_hash(fs)}")
    return tail


def tail_verification(tail, fr, lfw_small, pairs):
    """LFW verification of a downstream tail on the frozen trunk's cached features of ``lfw_small``."""
    from .. import eval as fseval
    from ..eval.trunk import trunk_features
    from ..geometry.heads import embed_tail

    feats = trunk_features(fr, lfw_small, "conv_sep")
    return fseval.verification(embed_tail(tail, feats.features), pairs)
