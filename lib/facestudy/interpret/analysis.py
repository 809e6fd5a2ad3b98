"""Chapter 4 (FaceMINT) analyses on top of the SAEs: templates, grid search, density, dataset search,
AUROC interpretability scores against labels, contrastive sets and feature-ablation effects."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata

from ..errors import ParameterError
from ..runtime import torch_threads
from . import saes
from .saes import metrics

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open",
    "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline",
    "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young")
AGE_BINS = ((0, 2, "age_0-2_infant"), (3, 12, "age_3-12_child"), (13, 19, "age_13-19_teen"),
            (20, 39, "age_20-39"), (40, 59, "age_40-59"), (60, 200, "age_60+"))
RACES = ("White", "Black", "Asian", "Indian", "Other")
SYNTHETIC_BINARY = ("eyeglasses", "sunglasses", "beard", "moustache", "hat", "mask", "smile", "mouth_open",
                    "eyes_closed")


def label_table(meta: pd.DataFrame) -> pd.DataFrame:
    """Binary ground-truth labels (1.0 / 0.0, NaN where unknown) from a FaceSet's meta (chapter 4).

    CelebA's 40 attributes (values +-1 or 0/1), UTKFace age bins, ``female`` and race one-hot, and for the
    synthetic world its accessory / expression amounts thresholded at 0.5 (``syn_<name>``).
    """
    out: dict[str, Any] = {}
    for a in CELEBA_ATTRIBUTES:
        if a in meta.columns:
            v = pd.to_numeric(meta[a], errors="coerce")
            out[a] = np.where(v.isna(), np.nan, (v > 0).astype(float))
    if "age" in meta.columns and "race" in meta.columns:  # UTKFace (the synthetic world's age is in [0, 1])
        age = pd.to_numeric(meta["age"], errors="coerce")
        for lo, hi, name in AGE_BINS:
            out[name] = np.where(age.isna(), np.nan, ((age >= lo) & (age <= hi)).astype(float))
        g = pd.to_numeric(meta["gender"], errors="coerce")
        out["female"] = np.where(g.isna(), np.nan, (g == 1).astype(float))
        r = pd.to_numeric(meta["race"], errors="coerce")
        for k, name in enumerate(RACES):
            out[f"race_{name}"] = np.where(r.isna(), np.nan, (r == k).astype(float))
    for a in SYNTHETIC_BINARY:
        if a in meta.columns and "race" not in meta.columns and a not in out:
            v = pd.to_numeric(meta[a], errors="coerce")
            out[f"syn_{a}"] = np.where(v.isna(), np.nan, (v >= 0.5).astype(float))
    return pd.DataFrame(out, index=meta.index)


def auroc_matrix(codes: torch.Tensor | np.ndarray, labels: pd.DataFrame, min_positives: int = 10
                 ) -> pd.DataFrame:
    """AUROC of every unit (rows) as a detector of every label (columns); ties (e.g. many zeros) get half
    credit. Labels with fewer than ``min_positives`` positives or negatives among known rows are dropped."""
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    if len(c) != len(labels):
        raise ParameterError(f"auroc_matrix: {len(c)} codes but {len(labels)} label rows")
    res = {}
    rank_cache: dict[bytes, np.ndarray] = {}  # labels of one dataset share their known rows: rank once
    for name in labels.columns:
        y = labels[name].to_numpy(dtype=float)
        known = ~np.isnan(y)
        yk = y[known] > 0.5
        npos, nneg = int(yk.sum()), int((~yk).sum())
        if npos < min_positives or nneg < min_positives:
            continue
        key = np.packbits(known).tobytes()
        if key not in rank_cache:
            rank_cache[key] = rankdata(c[known], axis=0)
        ranks = rank_cache[key]
        res[name] = (ranks[yk].sum(0) - npos * (npos + 1) / 2) / (npos * nneg)
    return pd.DataFrame(res)


def best_matches(aurocs: pd.DataFrame, two_sided: bool = True) -> pd.DataFrame:
    """Per label: the best unit, its AUROC and the score max(AUROC, 1 - AUROC) (``two_sided``)."""
    score = np.maximum(aurocs, 1 - aurocs) if two_sided else aurocs
    rows = []
    for name in aurocs.columns:
        unit = int(score[name].to_numpy().argmax())
        rows.append({"label": name, "unit": unit, "auroc": float(aurocs[name].iloc[unit]),
                     "score": float(score[name].iloc[unit])})
    return pd.DataFrame(rows).set_index("label")


def interpretability(codes: dict[str, torch.Tensor], labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Best-unit score per label for each code (raw neurons, PCA, SAEs, ...): (per-label table, summary)."""
    per_label = {}
    for name, c in codes.items():
        per_label[name] = best_matches(auroc_matrix(c, labels))["score"]
    table = pd.DataFrame(per_label)
    summary = pd.DataFrame({"mean best score": table.mean(), "labels >= 0.75": (table >= 0.75).sum(),
                            "units": {k: int(v.shape[1]) for k, v in codes.items()}})
    return table, summary


def top_bottom(codes: torch.Tensor, unit: int, n: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``n`` highest- and ``n`` lowest-activating inputs of ``unit`` (ties broken at random,
    seeded: for a sparse latent most inputs share the minimum 0)."""
    v = codes[:, unit].detach().cpu().numpy().astype(np.float64)
    jitter = np.random.default_rng(seed).random(len(v)) * 1e-9
    order = np.argsort(v + jitter)
    return order[::-1][:n].copy(), order[:n].copy()


def contrastive_sets(codes: torch.Tensor, unit: int, labels: pd.DataFrame, identities: Sequence,
                     n: int = 20, seed: int = 0) -> pd.DataFrame:
    """Table 8 analogue for one unit: label rates among its max- vs min-activating inputs, and the number
    of distinct identities in each set."""
    top, bottom = top_bottom(codes, unit, n, seed)
    ident = np.asarray(identities)
    rows = {}
    for name, idx in (("max", top), ("min", bottom)):
        row = labels.iloc[idx].mean(skipna=True).to_dict()
        row["distinct identities"] = int(len(set(ident[idx].tolist())))
        rows[name] = row
    return pd.DataFrame(rows)


def grid_search(x: torch.Tensor, runs: Sequence[tuple[str, dict]], *, steps: int, batch_size: int,
                seed: int = 0, d_in: int | None = None, expansion: int = 8, x_eval: torch.Tensor | None = None,
                device: str | torch.device = "cpu", workers: int = 1, cache: bool = False, progress=None
                ) -> tuple[pd.DataFrame, dict[str, saes.TrainResult]]:
    """Train one SAE per ``(kind, settings)`` and tabulate L0, L1, % alive, MSE, EV, cos (Table 9 analogue).

    Metrics are measured on ``x_eval`` (held-out templates) when given, else on ``x``; ``EV_train`` is
    always the explained variance on the training templates (the gap shows memorisation). ``workers``
    processes train the runs side by side (:func:`saes.train_many`; same SAEs as one process); ``cache=True``
    keeps the trained SAEs in ``<cache>/saes`` and loads them on an identical call.
    """
    return _grid(x, runs, [seed], steps=steps, batch_size=batch_size, d_in=d_in, expansion=expansion,
                 x_eval=x_eval, device=device, workers=workers, cache=cache, progress=progress)[seed]


def _sae_cache(cache: bool):
    if not cache:
        return None
    from .. import data

    return data.cache_dir() / "saes"


def _grid(x, runs, seeds, *, steps, batch_size, d_in, expansion, x_eval, device, workers, cache=None,
          progress=None):
    d = d_in or x.shape[1]
    specs = []
    for s in seeds:
        for kind, kw in runs:
            kw = dict(kw)
            kw.setdefault("expansion", expansion)
            specs.append((int(s), kind, kw))
    jobs = [(saes.create(kind, d_in=d, seed=s, **kw), x,
             {"steps": steps, "batch_size": batch_size, "seed": s, "device": device}) for s, kind, kw in specs]
    done = saes.train_many(jobs, workers=workers, cache=_sae_cache(cache), progress=progress)
    out: dict[int, tuple[list, dict]] = {int(s): ([], {}) for s in seeds}
    for (s, kind, kw), res in zip(specs, done, strict=True):
        final = saes.train.evaluate(res.sae, x_eval) if x_eval is not None else res.final
        name = run_name(kind, kw)
        rows, results = out[s]
        results[name] = res
        rows.append({"name": name, "kind": kind, **{k: v for k, v in kw.items() if k != "expansion"},
                     "M": res.sae.n_latents, **final, "EV_train": res.final["EV"],
                     "templates/s": res.templates_per_s, "tail_share": saes.train.tail_share(res.history)})
    return {s: (pd.DataFrame(rows), results) for s, (rows, results) in out.items()}


def run_name(kind: str, kw: dict) -> str:
    """A short label for a grid-search run (``topk k=16``, ``vanilla l1=0.3``)."""
    short = {"l1_coeff": "l1", "l0_coeff": "l0", "k": "k", "convention": ""}
    parts = [f"{short[k]}={v:g}" if isinstance(v, float) else (f"{short[k]}={v}" if short[k] else str(v))
             for k, v in kw.items() if k in short]
    return " ".join([kind, *parts])


def densities(codes: dict[str, torch.Tensor], threshold: float = 0.0) -> dict[str, np.ndarray]:
    """Fig. 3: for each code, the fraction of inputs activating each unit (value > threshold)."""
    return {k: metrics.density(v, threshold).numpy() for k, v in codes.items()}




def ablation_effect(model, sae, before: np.ndarray, after: np.ndarray, unit: int | None = None
                    ) -> pd.DataFrame:
    """Table 7 analogue: for image pairs (before/after an edit), the feature's activation, the raw template
    norm ||x||, the code's L0 and the cosine similarity of the two (normalised) templates.

    ``unit=None`` picks, per edit set, the latent whose mean activation drops most.
    """
    with torch_threads(1 if len(before) <= 64 else None):
        raw_b = model.embed(before, normalize=False)
        raw_a = model.embed(after, normalize=False)
    tb, ta = torch.nn.functional.normalize(raw_b, dim=1), torch.nn.functional.normalize(raw_a, dim=1)
    with torch.no_grad():
        fb, fa = sae.encode(tb), sae.encode(ta)
    if unit is None:
        unit = int((fb - fa).mean(0).argmax())
    df = pd.DataFrame({
        "act_before": fb[:, unit].numpy(), "act_after": fa[:, unit].numpy(),
        "norm_before": raw_b.norm(dim=1).numpy(), "norm_after": raw_a.norm(dim=1).numpy(),
        "L0_before": (fb > 0).sum(1).numpy(), "L0_after": (fa > 0).sum(1).numpy(),
        "cos": (tb * ta).sum(1).numpy()})
    df.attrs["unit"] = unit
    return df


def templates(model, sets: Sequence, cache: bool = True, threads: int | None = 1, progress=None) -> torch.Tensor:
    """L2-normalised templates of several FaceSets, stacked (cached by facestudy.eval.embed_cached).

    ``threads`` caps torch's CPU threads while embedding (None = unchanged; see
    :class:`facestudy.runtime.torch_threads`); ``progress`` (optional) is called with the number of images
    of each embedded chunk (not called for cached sets)."""
    from .. import eval as fseval

    out = []
    kw = {"progress": progress} if progress is not None else {}
    with torch_threads(threads):
        for fs in sets:
            emb = fseval.embed_cached(model, fs, **kw) if cache else model.embed(fs.images, **kw)
            out.append(torch.nn.functional.normalize(torch.as_tensor(emb).float(), dim=1))
    return torch.cat(out)


def study_faces(cfg, seed: int = 0, note=None):
    """Chapter 4's faces: every set of ``cfg.datasets`` that is present, each capped at ``cfg.limit_per_set``
    images (0 = all), concatenated as one FaceSet named "faces"; the synthetic world when none is present.

    ``note`` (optional) receives one line per skipped set. The notebook and the ``facestudy train 04_facemint
    saes`` stage call this with the same settings, so they embed the same faces under one cache key.
    """
    from .. import data, faceworld
    from ..errors import DataError

    say = note or (lambda _msg: None)
    sets = []
    for name in cfg.datasets:
        if not data.available(name):
            say(f"{name} is not available: skipped")
            continue
        try:
            sets.append(data.load(name, limit=cfg.limit_per_set or None, seed=seed))
        except DataError as err:
            say(f"{name} could not be loaded ({err}); skipped")
    if sets:
        return data.concat(sets, name="faces")
    say("no real face set is available: using the synthetic world (attributes known exactly)")
    return faceworld.make_faceset(cfg.synthetic_identities, cfg.synthetic_per_identity, seed=seed)


def study_split(cfg, faces, seed: int = 0) -> dict[str, np.ndarray]:
    """Chapter 4's identity-grouped train / discovery / validation split of ``faces`` (``cfg.split_fractions``)."""
    groups = identity_groups(faces.meta)
    return group_split(groups, dict(zip(["train", "discovery", "validation"], cfg.split_fractions, strict=True)),
                       seed=seed)


def sweep_runs(cfg) -> list[tuple[str, dict]]:
    """The expansion sweep of chapter 4 (one gated SAE per factor of ``cfg.sweep_expansion``)."""
    mid = cfg.grid_gated_l1[len(cfg.grid_gated_l1) // 2]
    return [("gated", {"l1_coeff": mid, "lr": cfg.sae_lr, "resample_every": cfg.resample_every, "expansion": e})
            for e in cfg.sweep_expansion]


def grid_runs(cfg, d_in: int) -> list[tuple[str, dict]]:
    """Chapter 4's sparsity grid: every family over its profile grid (F2's frontier, the best models)."""
    common = {"lr": cfg.sae_lr}
    return ([("vanilla", {"l1_coeff": v, "resample_every": cfg.resample_every, **common}) for v in cfg.grid_l1]
            + [("gated", {"l1_coeff": v, "resample_every": cfg.resample_every, **common}) for v in cfg.grid_gated_l1]
            + [("topk", {"k": min(k, cfg.expansion * d_in), **common}) for k in cfg.grid_k]
            + [("jumprelu", {"l0_coeff": v, "bandwidth": cfg.jumprelu_bandwidth, "theta0": cfg.jumprelu_theta0,
                             "threshold_lr_mult": cfg.jumprelu_threshold_lr_mult, "input_norm": "sqrt_d", **common})
               for v in cfg.grid_l0])


def f1_runs(cfg) -> list[tuple[str, dict]]:
    """F1's dictionary: one gated SAE with ``cfg.f1_expansion`` x d latents at l1 ``cfg.f1_l1`` (the density
    histogram's shape needs many more latents than active ones, as in the paper: 65,536 latents, L0 ~ 200)."""
    return [("gated", {"l1_coeff": cfg.f1_l1, "lr": cfg.sae_lr, "resample_every": cfg.resample_every,
                       "expansion": cfg.f1_expansion})]


def n_study_saes(cfg, d_in: int, n_seeds: int) -> int:
    """How many SAE trainings :func:`train_study_saes` asks for (the progress bar's total)."""
    return len(cfg.sweep_expansion) + n_seeds * (len(grid_runs(cfg, d_in)) + len(f1_runs(cfg)))


def train_study_saes(cfg, X_train: torch.Tensor, X_disc: torch.Tensor, X_val: torch.Tensor, seeds: Sequence[int],
                     device: str | torch.device = "cpu", cache: bool = True, progress=None) -> dict[str, Any]:
    """Every SAE of chapter 4's template sections, trained (or loaded from the SAE cache): the expansion
    sweep (first seed), the grid over ``seeds`` and F1's large dictionaries over ``seeds``. The notebook and the
    ``facestudy train 04_facemint saes`` stage call this with the same arguments, so the stage's SAEs are the
    chapter's. Returns ``sweep`` (table, results), ``grid`` (table, models), ``f1`` (table, models) and the
    seconds each part took in this call. ``progress`` (optional) is called with the number of SAEs done."""
    import time

    out: dict[str, Any] = {}
    t = time.perf_counter()
    out["sweep"] = grid_search(X_train, sweep_runs(cfg), steps=cfg.sae_steps, batch_size=cfg.batch_size,
                               seed=seeds[0], x_eval=X_disc, device=device, workers=cfg.sae_workers, cache=cache,
                               progress=progress)
    out["sweep_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = {"disc": X_disc, "val": X_val}
    out["grid"] = grid_seeds(X_train, grid_runs(cfg, X_train.shape[1]), seeds, steps=cfg.sae_steps,
                             batch_size=cfg.batch_size, evals=evals, expansion=cfg.expansion, device=device,
                             workers=cfg.sae_workers, cache=cache, progress=progress)
    out["grid_s"] = time.perf_counter() - t
    t = time.perf_counter()
    out["f1"] = grid_seeds(X_train, f1_runs(cfg), seeds, steps=cfg.sae_steps, batch_size=cfg.batch_size,
                           evals=evals, expansion=cfg.f1_expansion, device=device, workers=cfg.sae_workers,
                           cache=cache, progress=progress)
    out["f1_s"] = time.perf_counter() - t
    return out


def study_model(name: str, checkpoint: str = ""):
    """The FR model chapter 4 studies: a bundled pretrained name, or (``name="checkpoint"``, the paper
    profile) an arcface_torch IResNet-100 state dict supplied by the user (data_manifests/fr_checkpoints.yaml).

    A missing checkpoint raises :class:`~facestudy.errors.DataError` naming the file and where to put it.
    """
    from pathlib import Path

    from .. import models
    from ..errors import DataError

    if name != "checkpoint":
        return models.pretrained(name)
    if checkpoint:
        path = Path(checkpoint)
        if not path.exists():
            raise DataError(f"checkpoint {path} not found; pass checkpoint='<path to arcface_iresnet100.pth>' "
                            "(see data_manifests/fr_checkpoints.yaml for where to download it)")
    else:
        from .. import data

        path = data.locate("fr_checkpoints", "checkpoints/arcface_iresnet100.pth")
    from ..models.iresnet import load_arcface_state

    state = torch.load(path, map_location="cpu", weights_only=True)
    # strict: a missing, foreign or wrongly shaped key is a DataError naming it (never half the weights)
    return load_arcface_state(models.create("iresnet100"), state, source=str(path)).eval()


# ------------------------------------------------------------------------------ v2: splits, controls, claims
#: datasets whose identity labels name the same people (CelebA-10k and CelebA-id299 both use CelebA's
#: identity numbers and share identities and images): one namespace, so a split never separates them
IDENTITY_SPACE = {"celeba10k": "celeba", "celeba_id299": "celeba"}


def identity_groups(meta: pd.DataFrame) -> np.ndarray:
    """One group id per image for identity-grouped splits (chapter 4): ``<dataset>:<identity>`` (CelebA's
    two sets share one namespace, :data:`IDENTITY_SPACE`).

    Images without a known identity (UTKFace's ``"unknown"``, empty or -1) are each their own group: they
    are *not* one identity (counting them as one would put all of UTKFace on one side of every split)."""
    n = len(meta)
    ds = meta["dataset"].astype(str).to_numpy() if "dataset" in meta.columns else np.full(n, "set")
    ds = np.array([IDENTITY_SPACE.get(d, d) for d in ds], dtype=object).astype(str)
    ident = meta["identity"].astype(str).to_numpy() if "identity" in meta.columns else np.full(n, "unknown")
    unknown = np.isin(ident, ["unknown", "", "-1", "nan", "None"])
    groups = np.char.add(np.char.add(ds.astype(str), ":"), ident.astype(str))
    groups[unknown] = np.char.add(np.char.add(ds[unknown].astype(str), ":img"), np.flatnonzero(unknown).astype(str))
    return groups


def group_split(groups: Sequence, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Split row indices into named parts with no group (identity) in two parts (chapter 4).

    Groups are shuffled (seeded) and assigned greedily so that each part's image count approaches its
    fraction; fractions are normalised. Returns sorted index arrays per part name."""
    if not fractions or any(f < 0 for f in fractions.values()) or sum(fractions.values()) <= 0:
        raise ParameterError(f"group_split: fractions must be >= 0 with a positive sum, got {fractions}")
    g = np.asarray(groups)
    uniq, inv, counts = np.unique(g, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    total = float(sum(fractions.values()))
    names = list(fractions)
    bounds = np.cumsum([fractions[k] / total for k in names]) * len(g)
    cum = np.cumsum(counts[order]) - counts[order] / 2.0  # group midpoints along the shuffled order
    part_of_group = np.empty(len(uniq), dtype=np.int64)
    part_of_group[order] = np.searchsorted(bounds, cum, side="right").clip(0, len(names) - 1)
    part = part_of_group[inv]
    return {k: np.flatnonzero(part == i) for i, k in enumerate(names)}


def border_fraction(images: np.ndarray, frame: int = 8, dark: int = 8) -> np.ndarray:
    """Fraction of the outer ``frame``-pixel ring that is (near-)black, per image: the padding an alignment
    warp adds where the source crop ends (UTKFace's tight crops). A dataset artefact, not a face concept."""
    imgs = np.asarray(images)
    if imgs.ndim != 4:
        raise ParameterError(f"border_fraction: images must be (N, H, W, 3), got {imgs.shape}")
    h, w = imgs.shape[1:3]
    ring = np.zeros((h, w), dtype=bool)
    ring[:frame], ring[-frame:], ring[:, :frame], ring[:, -frame:] = True, True, True, True
    out = np.empty(len(imgs))
    for i in range(0, len(imgs), 1024):
        black = (imgs[i:i + 1024].max(axis=-1) <= dark)
        out[i:i + 1024] = black[:, ring].mean(1)
    return out


def validated_alignment(codes: torch.Tensor | np.ndarray, labels: pd.DataFrame, discovery: np.ndarray,
                        validation: np.ndarray, min_positives: int = 10, two_sided: bool = True
                        ) -> pd.DataFrame:
    """Non-circular label alignment (chapter 4, F3): per label, the unit (and its sign) with the best
    two-sided AUROC on the ``discovery`` rows, scored on the disjoint ``validation`` rows
    (``two_sided=False``: only units that fire *for* the label, the sense an ablation needs).

    Columns: ``unit``, ``sign`` (+1: high activation = label), ``disc`` (discovery score), ``val`` (validation
    AUROC in the chosen direction; 0.5 = chance, < 0.5 = the direction flipped), ``n_pos`` (validation
    positives). Labels too rare on either split are dropped."""
    c = codes.detach().cpu().numpy() if isinstance(codes, torch.Tensor) else np.asarray(codes)
    disc = auroc_matrix(c[discovery], labels.iloc[discovery], min_positives)
    val_lab = labels.iloc[validation]
    rows = []
    for name in disc.columns:
        a = disc[name].to_numpy()
        s = np.maximum(a, 1 - a) if two_sided else a
        unit = int(s.argmax())
        sign = 1 if a[unit] >= 0.5 else -1
        v = auroc_matrix(c[validation][:, [unit]] * sign, val_lab[[name]], min_positives)
        if name not in v.columns:
            continue
        y = val_lab[name].to_numpy(dtype=float)
        rows.append({"label": name, "unit": unit, "sign": sign, "disc": float(s[unit]),
                     "val": float(v[name].iloc[0]), "n_pos": int(np.nansum(y > 0.5))})
    return pd.DataFrame(rows).set_index("label") if rows else pd.DataFrame(
        columns=["unit", "sign", "disc", "val", "n_pos"])


def bimodality(density: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Shape of a Fig.-3 density histogram (chapter 4, F1): a two-component Gaussian mixture on log10 of
    the alive latents' densities (sklearn), with Ashman's D = sqrt(2)|mu1 - mu2| / sqrt(s1^2 + s2^2)
    (D > 2: two clearly separated modes), the sparse and dense modes' centres (densities), the sparse mode's
    weight, and BIC(1 component) - BIC(2) (> 0 favours two)."""
    from sklearn.mixture import GaussianMixture

    d = np.asarray(density, dtype=float)
    alive = d[d > 0]
    out = {"alive": float(len(alive)), "dead": float((d <= 0).sum())}
    if len(alive) < 10 or np.ptp(np.log10(alive)) == 0:
        return {**out, "ashman_d": float("nan"), "sparse_mode": float("nan"), "dense_mode": float("nan"),
                "sparse_weight": float("nan"), "dbic": float("nan")}
    z = np.log10(alive)[:, None]
    g1 = GaussianMixture(1, random_state=seed).fit(z)
    g2 = GaussianMixture(2, random_state=seed, n_init=3).fit(z)
    mu = g2.means_.ravel()
    sd = np.sqrt(g2.covariances_.ravel())
    lo, hi = int(mu.argmin()), int(mu.argmax())
    return {**out, "ashman_d": float(np.sqrt(2) * abs(mu[hi] - mu[lo]) / np.sqrt(sd[lo] ** 2 + sd[hi] ** 2)),
            "sparse_mode": float(10 ** mu[lo]), "dense_mode": float(10 ** mu[hi]),
            "sparse_weight": float(g2.weights_[lo]), "dbic": float(g1.bic(z) - g2.bic(z))}


def ev_at_l0(l0: Sequence[float], ev: Sequence[float], target: float) -> float:
    """Explained variance at ``target`` L0, interpolated linearly in log L0 along one family's grid
    (chapter 4, F2); NaN outside the grid's L0 range (no extrapolation)."""
    l0, ev = np.asarray(l0, dtype=float), np.asarray(ev, dtype=float)
    ok = np.isfinite(l0) & np.isfinite(ev) & (l0 > 0)
    l0, ev = l0[ok], ev[ok]
    if len(l0) == 0 or target < l0.min() or target > l0.max():
        return float("nan")
    order = np.argsort(l0)
    return float(np.interp(np.log(target), np.log(l0[order]), ev[order]))


def pick_best(grid: pd.DataFrame, ev_target: float, ev_col: str = "EV") -> pd.Series:
    """The sparsest run whose ``ev_col`` reaches ``ev_target`` (else the run with the highest EV)."""
    ok = grid[grid[ev_col] >= ev_target]
    return ok.loc[ok["L0"].idxmin()] if len(ok) else grid.loc[grid[ev_col].idxmax()]


def grid_seeds(x: torch.Tensor, runs: Sequence[tuple[str, dict]], seeds: Sequence[int], *, steps: int,
               batch_size: int, evals: dict[str, torch.Tensor], expansion: int = 4,
               device: str | torch.device = "cpu", workers: int = 1, cache: bool = False, progress=None
               ) -> tuple[pd.DataFrame, dict[tuple[str, int], Any]]:
    """:func:`grid_search` repeated over SAE ``seeds`` (initialisation and batch order), with every run's
    metrics on each held-out set of ``evals`` (columns ``<metric>`` for the first set, ``<set>_<metric>``
    for the others) and ``EV_train``. All runs x seeds go to ``workers`` processes at once. Returns (one row
    per run x seed, {(run name, seed): SAE})."""
    if not evals:
        raise ParameterError("grid_seeds needs at least one held-out set in evals")
    names = list(evals)
    frames, models = [], {}
    per_seed = _grid(x, runs, seeds, steps=steps, batch_size=batch_size, d_in=None, expansion=expansion,
                     x_eval=evals[names[0]], device=device, workers=workers, cache=cache, progress=progress)
    for s in seeds:
        grid, trained = per_seed[int(s)]
        grid["seed"] = int(s)
        grid["resampled"] = [trained[n].final.get("resampled", 0.0) for n in grid["name"]]
        grid["seconds"] = [trained[n].seconds for n in grid["name"]]
        for other in names[1:]:
            extra = pd.DataFrame([saes.train.evaluate(trained[n].sae, evals[other]) for n in grid["name"]])
            for col in extra.columns:
                grid[f"{other}_{col}"] = extra[col].to_numpy()
        for n in grid["name"]:
            models[(n, int(s))] = trained[n].sae
        frames.append(grid)
    return pd.concat(frames, ignore_index=True), models


def untrained_like(sae: saes.BaseSAE, x_train: torch.Tensor, seed: int) -> saes.BaseSAE:
    """The untrained control of a trained SAE (chapter 4, F3 and F3m): the same family and settings with a fresh
    seeded random dictionary, the trained SAE's input scaling, and the family's data-dependent initialisation on
    the same (scaled) raw training inputs ``x_train``. What a trained SAE gains over it is learned, not a side
    effect of having many units to choose from."""
    settings = sae.config.as_dict()
    kind = settings.pop("kind")
    ctl = saes.create(kind, **{k: v for k, v in settings.items() if k not in ("m", "seed")}, seed=seed)
    ctl.input_scale.copy_(sae.input_scale)
    ctl.init_from_data(x_train * sae.input_scale)
    return ctl


# ------------------------------------------------------------------------ an intermediate layer (chapter 4)
def layer_tokens(features: torch.Tensor) -> torch.Tensor:
    """A convolutional layer's activations (N, C, H, W) as tokens (N*H*W, C), float32, face-major: rows
    ``i*H*W ... (i+1)*H*W - 1`` are face ``i``'s positions in row-major order. Each position's C-vector is one
    SAE input, so one face gives H*W training samples."""
    if features.ndim != 4:
        raise ParameterError(f"layer_tokens needs (N, C, H, W) activations, got shape {tuple(features.shape)}")
    n, c, h, w = features.shape
    return features.float().permute(0, 2, 3, 1).reshape(n * h * w, c)


@torch.no_grad()
def unit_maps(encode: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
              batch_faces: int = 128) -> torch.Tensor:
    """Every unit's spatial map: (N, M, H, W) from (N, C, H, W) activations, where ``encode`` maps tokens
    (T, C) to codes (T, M) (an SAE's ``encode``, a PCA's ``encode``, or the identity for raw channels)."""
    n, _, h, w = features.shape
    out = []
    for i in range(0, n, batch_faces):
        f = features[i:i + batch_faces]
        z = encode(layer_tokens(f))
        out.append(z.reshape(len(f), h, w, -1).permute(0, 3, 1, 2))
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def pooled_codes(encode: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor,
                 batch_faces: int = 128) -> torch.Tensor:
    """Per face, each unit's maximum over the layer's positions, (N, M): "does the unit fire anywhere on
    this face", the per-image score a label is compared with."""
    n = len(features)
    out = []
    for i in range(0, n, batch_faces):
        out.append(unit_maps(encode, features[i:i + batch_faces], batch_faces).amax(dim=(2, 3)))
    return torch.cat(out) if out else torch.zeros(0)
