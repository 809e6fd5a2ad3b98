"""Miniature paper-format fixtures: tiny files in exactly the formats the ``paper`` profile reads (issue 20).

``facestudy data fixtures DIR`` (:func:`write_fixtures`) writes, from faces the project has (the prepared
CelebA-id299 / LFW caches when present, else the synthetic face world):

=====================================================  ================================================
``DIR/ms1m/train.rec``, ``train.idx``, ``property``    InsightFace RecordIO training set: record 0 is the
                                                        header (label = [first identity record, end)),
                                                        then one JPEG record per image (label = identity),
                                                        then one record per identity (label = its image
                                                        key range); ``property`` = ``<ids>,112,112``
``DIR/insightface_bins/{lfw,cfp_fp,agedb_30,cplfw,      verification ``.bin`` files (pickle of JPEG byte
calfw}.bin``                                            arrays + issame list), 10 folds, each fold its
                                                        same pairs then its different pairs (LFW's order)
``DIR/checkpoints/arcface_iresnet{18,50}.pth``          randomly initialised IResNet state dicts with the
(``--big``: also ``arcface_iresnet100.pth``)            arcface_torch keys and shapes (512-d, 112x112)
``DIR/checkpoints/cvlface_vit_kprpe_tiny.pt`` + yaml    a CVLface ``pretrained_model/model.pt`` (``net.``
(``--big``: ``cvlface_vit_base_kprpe_webface4m.pt``)    keys of ViT-KPRPE) and its ``model.yaml``
``DIR/manifests/*.yaml``                                the project's manifests, with the user-supplied
                                                        ones (``train_rec``, ``insightface_bins``,
                                                        ``fr_checkpoints``) listing these files with their
                                                        sha256 and size
=====================================================  ================================================

Point the book at them exactly as at a user's own files::

    export FACESTUDY_DATA=DIR:../shared/data FACESTUDY_MANIFESTS=DIR/manifests

The weights are random: the fixtures prove that every reader, key table and shape check of the ``paper``
profile works on files of the real layout, never any accuracy. The big models are written only on request
(``big=True``): IResNet-100 has 65.2 M parameters (261 MB as float32), ViT-base with KP-RPE 115.1 M
(460 MB; half of them in its 196·512 -> 512 feature head).
AdaFace's IR-101 ``.ckpt`` is not written: its released keys (``input_layer``, ``body``, ``output_layer``)
are not arcface_torch's, and the project has no reader for them yet.
"""
from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import yaml

from ..errors import DataError, ParameterError

BIN_NAMES = ("lfw", "cfp_fp", "agedb_30", "cplfw", "calfw")
SMALL_IRESNETS = (18, 50)
#: the tiny CVLface ViT-KPRPE written by default (the loader reads the architecture from the shapes)
TINY_VIT = dict(input_size=112, patch=16, dim=64, depth=2, heads=4, mlp_ratio=2.0, embedding_dim=64)
BASE_VIT = dict(input_size=112, patch=8, dim=512, depth=24, heads=16, mlp_ratio=3.0, embedding_dim=512)
SOURCES = ("auto", "real", "synthetic")


def _faces(source: str, identities: int, per_identity: int, seed: int):
    """(training FaceSet of ``identities`` x ``per_identity`` 112x112 faces, provenance text)."""
    from .. import data, faceworld

    if source not in SOURCES:
        raise ParameterError(f"fixture source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source != "synthetic" and data.available("celeba_id299"):
        faces = data.load("celeba_id299")
        lab = faces.labels
        ids, counts = np.unique(lab[lab >= 0], return_counts=True)
        keep = ids[counts >= per_identity][:identities]
        if len(keep) == identities:
            rows = np.concatenate([np.flatnonzero(lab == i)[:per_identity] for i in keep])
            return faces.subset(rows).relabel(), "CelebA-id299 (prepared cache)"
    if source == "real":
        raise DataError("fixture source 'real' needs CelebA-id299 (data_manifests/celeba_id299.yaml) with "
                        f"{identities} identities of >= {per_identity} images; use --source synthetic")
    faces = faceworld.make_faceset(identities, per_identity, seed=seed, size=112, nuisance="default")
    return faces, "the synthetic face world"


def _pairs(source: str, pairs_per_fold: int, seed: int, offset: int):
    """(FaceSet, pairs DataFrame a/b/same/fold, provenance) for the verification files; synthetic
    identities from ``offset`` on (disjoint from the training set's)."""
    from .. import data, faceworld

    if source != "synthetic" and data.available("lfw"):
        faces, pairs = data.lfw_pairs(n_per_fold=2 * pairs_per_fold)
        return faces, pairs, "LFW View 2 (first pairs of each fold)"
    n_ids = max(20, 4 * pairs_per_fold)
    faces = faceworld.make_faceset(n_ids, 2, seed=seed, size=112, identity_offset=offset)
    pairs = faceworld.synthetic_pairs(faces, 20 * pairs_per_fold, seed=seed, n_folds=10)
    return faces, pairs, "the synthetic face world"


def write_rec(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[Path]:
    """An InsightFace RecordIO set (``train.rec``, ``train.idx``, ``property``) as ``faces_emore`` lays it
    out: images grouped by identity; labels must be 0..K-1."""
    from .formats import RecordIOWriter, pack_record

    order = np.argsort(labels, kind="stable")
    images, labels = images[order], np.asarray(labels)[order]
    n, ids = len(labels), np.unique(labels)
    if not np.array_equal(ids, np.arange(len(ids))):
        raise ParameterError("write_rec needs labels 0..K-1")
    folder.mkdir(parents=True, exist_ok=True)
    rec, idx = folder / "train.rec", folder / "train.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write(0, pack_record([n + 1, n + 1 + len(ids)], b"", id=0))  # header: [first id record, end)
        for k in range(n):
            w.write_image(k + 1, images[k], float(labels[k]))
        for j, i in enumerate(ids):
            keys = np.flatnonzero(labels == i) + 1
            w.write(n + 1 + j, pack_record([int(keys[0]), int(keys[-1]) + 1], b"", id=n + 1 + j))
    prop = folder / "property"
    prop.write_text(f"{len(ids)},{images.shape[1]},{images.shape[2]}")
    return [rec, idx, prop]


def write_bins(folder: Path, faces, pairs: pd.DataFrame, names: Sequence[str] = BIN_NAMES) -> list[Path]:
    """Verification ``.bin`` files: per fold its same pairs, then its different pairs (LFW's layout); each
    name gets its own shuffle of the pairs within every fold so the files differ."""
    from .formats import encode_jpeg, write_bin

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for j, name in enumerate(names):
        rng = np.random.default_rng(j)
        rows = []
        for _, fold in pairs.groupby("fold", sort=True):
            for same in (True, False):
                part = fold[fold["same"] == same]
                rows.append(part.iloc[rng.permutation(len(part))])
        p = pd.concat(rows)
        imgs = [encode_jpeg(faces.images[i]) for ab in zip(p["a"], p["b"], strict=True) for i in ab]
        out.append(write_bin(folder / f"{name}.bin", imgs, p["same"].to_numpy()))
    return out


def _calibrated_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict after its BatchNorm running statistics were set on a few random face-sized
    inputs (as training leaves them in a real checkpoint): with the initial mean 0 / variance 1 an eval-mode
    IResNet-100 multiplies its activations at every block and returns NaN embeddings, which stopped chapter 4's
    paper rehearsal."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 112, 112) * 0.5)
    return model.eval().state_dict()


def iresnet_state(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised IResNet-``depth`` state dict with arcface_torch's keys and shapes (512-d),
    BatchNorm statistics calibrated (:func:`_calibrated_state`)."""
    from ..models import create

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + depth)
        return _calibrated_state(create(f"iresnet{depth}", embedding_dim=512))


def adaface_checkpoint(depth: int = 100, seed: int = 0) -> dict[str, Any]:
    """A randomly initialised AdaFace IR-``depth`` in the layout of AdaFace's released Lightning ``.ckpt``:
    ``{"state_dict": {"model.<IR key>": ..., "head.kernel": ...}, "epoch", "global_step"}`` (tensors and
    numbers only, so it loads with ``weights_only=True``; the real file also pickles its hyper-parameters)."""
    from ..models.irnet import IRNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1000 + depth)
        state = {f"model.{k}": v for k, v in _calibrated_state(IRNet(depth)).items()}
        state["head.kernel"] = torch.randn(512, 16) * 0.01  # the margin head's class centres (not read)
    return {"epoch": 0, "global_step": 0, "state_dict": state}


def cvlface_state(arch: dict[str, Any], seed: int = 0) -> tuple[dict[str, torch.Tensor], Any]:
    """(CVLface ``pretrained_model/model.pt`` state dict with ``net.`` keys, our model it came from)."""
    from ..kprpe.cvlface import export_state_dict
    from ..models.vit import build_vit

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_vit(**arch, rpe="kprpe").eval()
        with torch.no_grad():  # KP-RPE starts at zero: give it weights so that the keypoints matter
            model.rpe.net.weight.normal_(0, 0.5)
            model.rpe.net.bias.normal_(0, 0.5)
    return export_state_dict(model, prefix="net."), model


def _cvlface_yaml(name: str, dim: int) -> str:
    return (f"name: {name}\noutput_dim: {dim}\ncolor_space: RGB\nmask_ratio: 0.0\n"
            "rpe_config:\n  ctx_type: rel_keypoint_splithead_unshared\n  ratio: 1.9\n")


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_manifests(folder: Path, written: dict[str, list[tuple[str, str]]], provenance: str) -> Path:
    """Copy the project's manifests into ``folder/manifests``; the user-supplied ones list the fixture files
    (path, sha256, size, what) in place of (or besides) the entries a user would fill."""
    from .store import manifest_dir

    out = folder / "manifests"
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(manifest_dir().glob("*.yaml")):
        doc = yaml.safe_load(src.read_text())
        name = doc.get("name")
        if name in written:
            doc = copy.deepcopy(doc)
            doc["title"] = f"FIXTURE (random weights / {provenance}): {doc['title']}"
            doc["description"] = (f"Miniature paper-format fixture written by `facestudy data fixtures` from "
                                  f"{provenance}; same layout as the real files, tiny and meaningless. "
                                  + str(doc["description"]).strip())
            doc["obtain"] = "facestudy data fixtures DIR (lib/facestudy/data/fixtures.py)"
            files = {f["path"]: f for f in doc["files"]}
            for rel, what in written[name]:
                p = folder / rel
                files[rel] = {"path": rel, "sha256": _sha(p), "size": p.stat().st_size,
                              "description": what, "layout": files.get(rel, {}).get("layout", "see description")}
            doc["files"] = list(files.values())
        (out / src.name).write_text(yaml.safe_dump(doc, sort_keys=False, width=110, allow_unicode=True))
    return out


def write_fixtures(folder: str | Path, *, big: bool = False, source: str = "auto", identities: int = 20,
                   per_identity: int = 6, pairs_per_fold: int = 3, seed: int = 0,
                   iresnets: Sequence[int] | None = None, progress: bool = False) -> pd.DataFrame:
    """Write the fixtures into ``folder``; returns one row per file (manifest, path, bytes, content).

    ``iresnets`` picks the IResNet depths (default 18 and 50, plus 100 when ``big``); ``big`` also writes
    the AdaFace IR-101 checkpoint chapter 1's ``paper`` profile reads and the ViT-base KP-RPE checkpoint at
    the path chapter 3's ``paper`` profile reads."""
    folder = Path(folder)
    if identities < 2 or per_identity < 2 or pairs_per_fold < 1:
        raise ParameterError("fixtures need identities >= 2, per_identity >= 2 and pairs_per_fold >= 1")
    if folder.exists() and not folder.is_dir():
        raise ParameterError(f"fixture folder {folder} is a file")
    depths = list(iresnets) if iresnets is not None else [*SMALL_IRESNETS, *([100] if big else [])]
    bad = [d for d in depths if d not in (18, 34, 50, 100)]
    if bad:
        raise ParameterError(f"IResNet depths must be 18, 34, 50 or 100, got {bad}")

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    rows: list[dict[str, Any]] = []
    written: dict[str, list[tuple[str, str]]] = {"train_rec": [], "insightface_bins": [], "fr_checkpoints": []}

    def add(manifest: str, path: Path, what: str) -> None:
        rel = path.relative_to(folder).as_posix()
        written[manifest].append((rel, what))
        rows.append({"manifest": manifest, "file": rel, "bytes": path.stat().st_size, "content": what})

    faces, prov_rec = _faces(source, identities, per_identity, seed)
    say(f"train.rec: {len(faces)} faces of {faces.n_identities} identities from {prov_rec}")
    rec, idx, prop = write_rec(folder / "ms1m", faces.images, faces.labels)
    add("train_rec", rec, f"{len(faces)} JPEG faces 112x112 of {faces.n_identities} identities ({prov_rec})")
    add("train_rec", idx, "key<TAB>offset index of train.rec")
    rows.append({"manifest": "-", "file": prop.relative_to(folder).as_posix(), "bytes": prop.stat().st_size,
                 "content": "identities,height,width (InsightFace property file)"})
    vfaces, pairs, prov_bin = _pairs(source, pairs_per_fold, seed, identities)
    say(f"verification .bin: {len(pairs)} pairs from {prov_bin}")
    for p in write_bins(folder / "insightface_bins", vfaces, pairs):
        add("insightface_bins", p, f"{len(pairs)} pairs in 10 folds ({prov_bin})")
    ck = folder / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    for d in depths:
        state = iresnet_state(d, seed)
        n_par = sum(v.numel() for k, v in state.items() if not k.endswith("num_batches_tracked"))
        path = ck / f"arcface_iresnet{d}.pth"
        say(f"IResNet-{d}: {n_par / 1e6:.1f} M parameters -> {path}")
        torch.save(state, path)
        add("fr_checkpoints", path, f"random IResNet-{d}, arcface_torch keys, {n_par / 1e6:.1f} M parameters")
    if big:
        ckpt = adaface_checkpoint(100, seed)
        n_par = sum(v.numel() for k, v in ckpt["state_dict"].items()
                    if k.startswith("model.") and not k.endswith("num_batches_tracked"))
        path = ck / "adaface_ir101_webface4m.ckpt"
        say(f"AdaFace IR-101: {n_par / 1e6:.1f} M parameters -> {path}")
        torch.save(ckpt, path)
        add("fr_checkpoints", path, f"random AdaFace IR-101, Lightning .ckpt layout (state_dict with model. keys), "
                                    f"{n_par / 1e6:.1f} M parameters")
    for arch, stem, name in ([(TINY_VIT, "cvlface_vit_kprpe_tiny", "tiny")]
                             + ([(BASE_VIT, "cvlface_vit_base_kprpe_webface4m", "base")] if big else [])):
        state, _ = cvlface_state(arch, seed)
        n_par = sum(v.numel() for v in state.values())
        path = ck / f"{stem}.pt"
        say(f"CVLface ViT-KPRPE {name}: {n_par / 1e6:.2f} M parameters -> {path}")
        torch.save(state, path)
        (ck / f"{stem}.yaml").write_text(_cvlface_yaml(name, arch["embedding_dim"]))
        add("fr_checkpoints", path, f"random CVLface ViT-KPRPE ({name}: dim {arch['dim']}, depth {arch['depth']}, "
                                    f"heads {arch['heads']}), keys prefixed net., {n_par / 1e6:.2f} M parameters")
        add("fr_checkpoints", ck / f"{stem}.yaml", "its CVLface model.yaml")
    mdir = _write_manifests(folder, written, f"{prov_rec} / {prov_bin}")
    say(f"manifests -> {mdir}; use: export FACESTUDY_DATA={folder} FACESTUDY_MANIFESTS={mdir}")
    return pd.DataFrame(rows)


def main(args: Any) -> int:
    """``facestudy data fixtures DIR [--big] [--source auto|real|synthetic]`` (called by :mod:`facestudy.cli`)."""
    if len(args.names) != 1:
        raise ParameterError("facestudy data fixtures takes one output folder: facestudy data fixtures DIR")
    if args.limit is not None:
        raise ParameterError("--limit is for data prepare; fixtures are always tiny")
    df = write_fixtures(Path(args.names[0]), big=args.big, source=args.source, progress=not args.quiet)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(df.drop(columns=["content"]).to_string(index=False))
    print(f"{df['bytes'].sum() / 1e6:.1f} MB in {len(df)} files")
    return 0


__all__ = ["BASE_VIT", "BIN_NAMES", "TINY_VIT", "cvlface_state", "iresnet_state", "write_bins", "write_fixtures",
           "write_rec"]
