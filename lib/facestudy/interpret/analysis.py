"""Chapter 4 (FaceMINT) analyses on top of the SAEs: templates, grid search, density, dataset search,
AUROC interpretability scores against labels, contrastive sets and feature-ablation effects."""
from __future__ import annotations

from typing import Any, Sequence

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
    for name in labels.columns:
        y = labels[name].to_numpy(dtype=float)
        known = ~np.isnan(y)
        yk = y[known] > 0.5
        npos, nneg = int(yk.sum()), int((~yk).sum())
        if npos < min_positives or nneg < min_positives:
            continue
        ranks = rankdata(c[known], axis=0)
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
                device: str | torch.device = "cpu") -> tuple[pd.DataFrame, dict[str, saes.TrainResult]]:
    """Train one SAE per ``(kind, settings)`` and tabulate L0, L1, % alive, MSE, EV, cos (Table 9 analogue).

    Metrics are measured on ``x_eval`` (held-out templates) when given, else on ``x``; ``EV_train`` is
    always the explained variance on the training templates (the gap shows memorisation).
    """
    d = d_in or x.shape[1]
    rows, results = [], {}
    for kind, kw in runs:
        kw = dict(kw)
        kw.setdefault("expansion", expansion)
        sae = saes.create(kind, d_in=d, seed=seed, **kw)
        res = saes.train_sae(sae, x, steps=steps, batch_size=batch_size, seed=seed, device=device)
        final = saes.train.evaluate(res.sae, x_eval) if x_eval is not None else res.final
        name = run_name(kind, kw)
        results[name] = res
        rows.append({"name": name, "kind": kind, **{k: v for k, v in kw.items() if k != "expansion"},
                     "M": res.sae.n_latents, **final, "EV_train": res.final["EV"],
                     "templates/s": res.templates_per_s})
    return pd.DataFrame(rows), results


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


def templates(model, sets: Sequence, cache: bool = True, threads: int | None = 1) -> torch.Tensor:
    """L2-normalised templates of several FaceSets, stacked (cached by facestudy.eval.embed_cached).

    ``threads`` caps torch's CPU threads while embedding (None = unchanged; see
    :class:`facestudy.runtime.torch_threads`)."""
    from .. import eval as fseval

    out = []
    with torch_threads(threads):
        for fs in sets:
            emb = fseval.embed_cached(model, fs) if cache else model.embed(fs.images)
            out.append(torch.nn.functional.normalize(torch.as_tensor(emb).float(), dim=1))
    return torch.cat(out)


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
    model = models.create("iresnet100")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise DataError(f"{path}: {len(missing)} weights missing for iresnet100 (e.g. {missing[:3]}); supply an "
                        "arcface_torch IResNet-100 state dict")
    return model.eval()
