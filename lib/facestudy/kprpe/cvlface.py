"""Load CVLface's released KP-RPE ViT checkpoints into our face ViT (chapter 3, METHODS.md §1.1–1.4).

The ``paper`` profile of chapter 3 evaluates the official ViT-base + KP-RPE trained on WebFace4M
(HuggingFace ``minchul/cvlface_adaface_vit_base_kprpe_webface4m``). That repository holds

* ``pretrained_model/model.pt``: ``torch.save`` of the state dict of CVLface's ``ViTKPRPEModel``, i.e. the
  keys of ``VisionTransformerWithKPRPE`` prefixed with ``net.``; its config sits beside it as
  ``pretrained_model/model.yaml`` (``name``, ``output_dim``, ``color_space``, ``mask_ratio``, ``rpe_config``);
* ``model.safetensors``: the same weights saved by the HuggingFace wrapper, prefixed with ``model.net.``.

Key layout of ``VisionTransformerWithKPRPE`` (no prefix) and ours (:class:`facestudy.models.vit.FaceViT` with
a :class:`facestudy.kprpe.KPRPE`), read from ``models/vit_kprpe/vit.py`` and ``rpe_options.py``:

=====================================================  =====================================
CVLface                                                 facestudy
=====================================================  =====================================
``patch_embed.proj.{weight,bias}``                     ``patch_embed.{weight,bias}``
``pos_embed`` (1, N, dim)                              ``pos_embed``
``blocks.i.norm1/norm2.{weight,bias}``                 same
``blocks.i.attn.qkv.weight`` (no bias)                 same
``blocks.i.attn.proj.{weight,bias}``                   same
``blocks.i.mlp.fc1/fc2.{weight,bias}``                 ``blocks.i.mlp.0/2.{weight,bias}``
``norm.{weight,bias}``                                 same
``feature.0..3.*`` (Linear, BN, Linear, BN eps 2e-5)   ``head.0..3.*``
``keypoint_linear.{weight,bias}`` (2K -> 49·H·L)       ``rpe.net.{weight,bias}``
``keypoint_linear.{0,2,3}.*`` (``_v2`` ablations)      ``rpe.net.{0,2,3}.*``
``mask_token`` (only when ``mask_ratio > 0``)          ignored (training-only)
=====================================================  =====================================

The per-block iRPE modules of CVLface hold no parameters or persistent buffers (contextual mode on keys: the
bucket values come from ``keypoint_linear``); our bucket index ``rpe.index`` is a non-persistent buffer.

Semantics that had to agree (all checked in CVLface's code): RGB input normalised as (x/255 − 0.5)/0.5;
keypoints (B, 5, 2) as (x, y) in [0, 1], order left eye, right eye, nose, left mouth, right mouth; patch
centres ((col + .5)/W, (row + .5)/H) and descriptor [u − P1x, v − P1y, …]; output index (l·H + h)·49 + bucket;
qkv without bias, q scaled before the product; ReLU6 MLP; BatchNorm eps 2e-5. A config with
``color_space: BGR`` (CVLface then flips the channels inside ``forward``) is folded into the patch
embedding by flipping its input-channel axis, which is exact because the normalisation is the same on every
channel.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import DataError, ParameterError

HF_REPO = "minchul/cvlface_adaface_vit_base_kprpe_webface4m"
KNOWN_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.", "model.", "net.")
RELEASED_CTX_TYPE = "rel_keypoint_splithead_unshared"
IGNORED_KEYS: tuple[str, ...] = ("mask_token",)
_SHAPE_KEYS = ("input_size", "patch", "dim", "depth", "heads", "mlp_ratio", "embedding_dim")
_PRESETS = {"base": {"depth": 24, "heads": 16, "mlp_ratio": 3.0},
            "small": {"depth": 12, "heads": 8, "mlp_ratio": 5.0}}

_FIX = (f"pass the state dict of CVLface's ViT-KPRPE (pretrained_model/model.pt or model.safetensors of the "
        f"HuggingFace repo {HF_REPO}; see data_manifests/fr_checkpoints.yaml)")

# One table, read both ways: (CVLface key template, our key template). ``{name}`` stands for the regex of
# _FIELDS[name] and is carried over unchanged, so the same row renames CVLface -> ours and ours -> CVLface.
_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("patch_embed.proj.{wb}", "patch_embed.{wb}"),
    ("pos_embed", "pos_embed"),
    ("blocks.{i}.{norm}.{wb}", "blocks.{i}.{norm}.{wb}"),
    ("blocks.{i}.attn.qkv.weight", "blocks.{i}.attn.qkv.weight"),
    ("blocks.{i}.attn.proj.{wb}", "blocks.{i}.attn.proj.{wb}"),
    ("blocks.{i}.mlp.fc1.{wb}", "blocks.{i}.mlp.0.{wb}"),
    ("blocks.{i}.mlp.fc2.{wb}", "blocks.{i}.mlp.2.{wb}"),
    ("norm.{wb}", "norm.{wb}"),
    ("feature.{j}.{bn}", "head.{j}.{bn}"),
    ("keypoint_linear.{wb}", "rpe.net.{wb}"),
    ("keypoint_linear.{i}.{wb}", "rpe.net.{i}.{wb}"),  # the _v2 ablations' MLP
)
_FIELDS = {"wb": "weight|bias", "i": r"\d+", "norm": "norm1|norm2", "j": "[0-3]",
           "bn": "weight|bias|running_mean|running_var|num_batches_tracked"}


def _compile(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_FIELDS[p]})" for i, p in enumerate(parts)))


_RULES = {"ours": [(_compile(a), b) for a, b in _KEY_MAP], "theirs": [(_compile(b), a) for a, b in _KEY_MAP]}


def _rename(key: str, to: str) -> str | None:
    """``key`` renamed ``to`` "ours" (from CVLface) or "theirs" (to CVLface); None when no row matches."""
    for pattern, target in _RULES[to]:
        m = pattern.fullmatch(key)
        if m:
            return target.format(**m.groupdict())
    return None


def _short(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


# ----------------------------------------------------------------------------------- raw state dicts
def unwrap_state_dict(obj: Any, source: str = "state dict") -> dict[str, torch.Tensor]:
    """The flat tensor dict of a checkpoint object, with CVLface's wrapper prefixes removed (chapter 3).

    Accepts a plain state dict or one nested under ``state_dict`` / ``model`` / ``net`` /
    ``model_state_dict``; strips ``module.``, ``_orig_mod.``, ``model.``, ``net.`` as long as *every* key
    carries the same one (``model.net.`` of the HuggingFace wrapper, ``net.`` of ``pretrained_model/model.pt``).
    """
    if not isinstance(obj, Mapping):
        raise DataError(f"CVLface checkpoint {source}: expected a state dict (a mapping of tensors), got "
                        f"{type(obj).__name__}; {_FIX}")
    if obj and not all(torch.is_tensor(v) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model", "net"):
            if isinstance(obj.get(key), Mapping) and obj[key] and all(torch.is_tensor(v) for v in obj[key].values()):
                obj = obj[key]
                break
        else:
            bad = [str(k) for k, v in obj.items() if not torch.is_tensor(v)]
            raise DataError(f"CVLface checkpoint {source}: entries that are not tensors: {_short(bad)}; {_FIX}")
    sd = {str(k): v for k, v in obj.items()}
    if not sd:
        raise DataError(f"CVLface checkpoint {source}: the state dict is empty; {_FIX}")
    stripped = True
    while stripped:
        stripped = False
        for p in KNOWN_PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                stripped = True
    return sd


def _ensure_unwrapped(sd: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    if any(str(k).startswith(KNOWN_PREFIXES) for k in sd) or not all(torch.is_tensor(v) for v in sd.values()):
        return unwrap_state_dict(sd, source)
    return dict(sd)


# ---------------------------------------------------------------------------------------- architecture
def infer_arch(sd: Mapping[str, Any], ctx_type: str | None = None, source: str = "state dict") -> dict[str, Any]:
    """The :func:`facestudy.models.vit.build_vit` arguments of a CVLface KP-RPE state dict (chapter 3, §1.1).

    Read from shapes: patch and dim (patch embedding), token count (position embedding; the grid is square,
    as CVLface asserts), depth (number of blocks), MLP ratio (``fc1``), embedding size (``feature.2``).
    Heads cannot be read from the attention weights; for the released ``rel_keypoint_splithead_unshared``
    (the default) they are ``keypoint_linear`` out-features / (49 · depth). For other ``ctx_type`` values
    pass the heads yourself (``arch=`` of :func:`load_cvlface_kprpe`). ``drop_path`` is set to 0 (it only
    acts in training).
    """
    sd = _ensure_unwrapped(sd, source)
    need = ["patch_embed.proj.weight", "pos_embed", "feature.0.weight", "feature.2.weight"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise DataError(f"CVLface checkpoint {source}: keys {_short(missing)} are missing (found e.g. "
                        f"{_short(list(sd), 5)}), so this is not a CVLface ViT; {_FIX}")
    w = sd["patch_embed.proj.weight"]
    dim, patch = int(w.shape[0]), int(w.shape[-1])
    n_tokens = int(sd["pos_embed"].shape[1])
    side = math.isqrt(n_tokens)
    if side * side != n_tokens:
        raise DataError(f"CVLface checkpoint {source}: pos_embed has {n_tokens} tokens, not a square grid; {_FIX}")
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"^blocks\.(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0 or sorted(blocks) != list(range(depth)):
        raise DataError(f"CVLface checkpoint {source}: transformer blocks {sorted(blocks)} are not 0..depth-1; "
                        f"{_FIX}")
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is None:
        raise DataError(f"CVLface checkpoint {source}: key blocks.0.mlp.fc1.weight is missing; {_FIX}")
    hidden_in, emb_out = int(sd["feature.0.weight"].shape[0]), int(sd["feature.2.weight"].shape[0])
    if hidden_in != dim or int(sd["feature.2.weight"].shape[1]) != dim or emb_out != dim:
        raise DataError(f"CVLface checkpoint {source}: feature head {tuple(sd['feature.0.weight'].shape)} -> "
                        f"{tuple(sd['feature.2.weight'].shape)} with width {dim}; our FaceViT head needs "
                        f"output_dim == embed_dim ({dim}), as in every released CVLface ViT")
    heads = _infer_heads(sd, depth, ctx_type or RELEASED_CTX_TYPE, source)
    return {"input_size": side * patch, "patch": patch, "dim": dim, "depth": depth, "heads": heads,
            "mlp_ratio": float(fc1.shape[0]) / dim, "embedding_dim": emb_out, "drop_path": 0.0}


def _kp_linear(sd: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(first layer weight, last layer weight) of the keypoint network (Linear or the _v2 MLP)."""
    if "keypoint_linear.weight" in sd:
        return sd["keypoint_linear.weight"], sd["keypoint_linear.weight"]
    idx = sorted({int(m.group(1)) for k in sd if (m := re.match(r"^keypoint_linear\.(\d+)\.weight$", k))})
    if idx:
        return sd[f"keypoint_linear.{idx[0]}.weight"], sd[f"keypoint_linear.{idx[-1]}.weight"]
    return None, None


def _infer_heads(sd: Mapping[str, torch.Tensor], depth: int, ctx_type: str, source: str,
                 nb: int = 49) -> int | None:
    _, last = _kp_linear(sd)
    if last is None:
        raise DataError(f"CVLface checkpoint {source}: no keypoint_linear.* weights, so this is not a KP-RPE "
                        f"checkpoint (a plain ViT or iRPE one); {_FIX}")
    if ctx_type != RELEASED_CTX_TYPE:
        return None
    out = int(last.shape[0])
    if out % (nb * depth):
        raise DataError(f"CVLface checkpoint {source}: keypoint_linear has {out} outputs, not a multiple of "
                        f"49 x depth ({nb * depth}); it is not ctx_type {RELEASED_CTX_TYPE!r} - pass the "
                        f"ctx_type of its model.yaml")
    return out // (nb * depth)


def _rpe_kwargs(sd: Mapping[str, torch.Tensor], ctx_type: str, ratio: float) -> dict[str, Any]:
    first, _ = _kp_linear(sd)
    if first is None:
        raise DataError(f"no keypoint_linear.* weights: not a KP-RPE checkpoint; {_FIX}")
    k2 = int(first.shape[1])
    if k2 % 2 or not 1 <= k2 // 2 <= 5:
        raise DataError(f"keypoint_linear takes {k2} inputs; expected 2 x (1..5) keypoint coordinates")
    return {"ctx_type": ctx_type, "num_keypoints": k2 // 2, "ratio": ratio}


def _norm_size(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _check_arch(arch: Mapping[str, Any], found: Mapping[str, Any], source: str) -> dict[str, Any]:
    unknown = set(arch) - set(found)
    if unknown:
        raise ParameterError(f"arch has unknown keys {sorted(unknown)}; valid: {', '.join(found)}")
    out = dict(found)
    bad = []
    for key, val in arch.items():
        if key in _SHAPE_KEYS and found.get(key) is not None:
            same = (_norm_size(val) == _norm_size(found[key]) if key == "input_size"
                    else math.isclose(float(val), float(found[key])))
            if not same:
                bad.append(f"{key}={val!r} but the file has {found[key]!r}")
        out[key] = val
    if bad:
        raise DataError(f"CVLface checkpoint {source} does not match the requested architecture: "
                        f"{'; '.join(bad)}. Pass arch=None to take the architecture from the file "
                        f"(facestudy.kprpe.cvlface.infer_arch), or the checkpoint that matches the profile")
    if out.get("heads") is None:
        raise DataError(f"CVLface checkpoint {source}: the number of heads cannot be read from a non-"
                        f"{RELEASED_CTX_TYPE} checkpoint; pass arch={{'heads': ...}}")
    return out


def _meta_shapes(arch: Mapping[str, Any], rpe_kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    from ..models.vit import build_vit

    with torch.device("meta"):
        model = build_vit(**arch, rpe="kprpe", rpe_kwargs=dict(rpe_kwargs))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------------ conversion
def convert_state_dict(sd: Mapping[str, Any], arch: Mapping[str, Any] | None = None, *,
                       ctx_type: str = RELEASED_CTX_TYPE, ratio: float = 1.9, color_space: str = "RGB",
                       source: str = "state dict") -> dict[str, torch.Tensor]:
    """CVLface ViT-KPRPE state dict -> our ``FaceViT(rpe=KPRPE)`` state dict (chapter 3, §1.1–1.3).

    Strips the wrapper prefixes (:func:`unwrap_state_dict`), renames every key (table in the module
    docstring), and checks every key and shape against the model ``build_vit(**arch, rpe="kprpe")`` would
    build (``arch=None``: :func:`infer_arch`). Unknown, missing or mis-shaped keys raise one
    :class:`~facestudy.errors.DataError` that names ``source`` and the offending keys. ``mask_token`` is
    dropped (training only); a qkv bias is accepted only if it is all zeros (our qkv has none). Floating
    tensors come back as float32; ``color_space="BGR"`` folds CVLface's channel flip into the patch embedding.
    """
    if color_space not in ("RGB", "BGR"):
        raise ParameterError(f"color_space must be 'RGB' or 'BGR', got {color_space!r}")
    theirs = _ensure_unwrapped(sd, source)
    found = infer_arch(theirs, ctx_type=ctx_type, source=source)
    full = _check_arch(arch or {}, found, source)
    rpe_kwargs = _rpe_kwargs(theirs, ctx_type, ratio)
    expected = _meta_shapes(full, rpe_kwargs)

    out: dict[str, torch.Tensor] = {}
    unknown, shape_bad = [], []
    for key, val in theirs.items():
        if key in IGNORED_KEYS:
            continue
        if re.match(r"^blocks\.\d+\.attn\.qkv\.bias$", key):
            if torch.count_nonzero(val):
                unknown.append(f"{key} (non-zero qkv bias: our ViT's qkv has no bias, as CVLface's qkv_bias=False)")
            continue
        ours = _rename(key, "ours")
        if ours is None or ours not in expected:
            unknown.append(key)
            continue
        if tuple(val.shape) != expected[ours]:
            shape_bad.append(f"{key} {tuple(val.shape)} vs model {ours} {expected[ours]}")
            continue
        out[ours] = val.detach().float() if val.is_floating_point() else val.detach()
    missing = [k for k in expected if k not in out and not k.endswith("num_batches_tracked")]
    if unknown or missing or shape_bad:
        parts = []
        if unknown:
            parts.append(f"unknown keys: {_short(unknown)}")
        if missing:
            parts.append("missing keys (our names): " + _short(missing))
        if shape_bad:
            parts.append("shape mismatches: " + "; ".join(shape_bad[:6]) +
                         (f" (+{len(shape_bad) - 6} more)" if len(shape_bad) > 6 else ""))
        raise DataError(f"CVLface checkpoint {source} does not fit the KP-RPE ViT {full}: " + " | ".join(parts) +
                        f". Fix: {_FIX}, or pass the arch / ctx_type it was trained with (its model.yaml)")
    for k in expected:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.tensor(0, dtype=torch.long)
    if color_space == "BGR":
        out["patch_embed.weight"] = out["patch_embed.weight"].flip(1).contiguous()
    return out


def export_state_dict(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Our KP-RPE ``FaceViT`` -> a CVLface ``VisionTransformerWithKPRPE`` state dict (chapter 3).

    The inverse of :func:`convert_state_dict` (``prefix="net."`` gives the layout of CVLface's
    ``pretrained_model/model.pt``, ``"model.net."`` that of the HuggingFace ``model.safetensors``).
    """
    rpe = getattr(model, "rpe", None)
    if rpe is None or not getattr(rpe, "uses_keypoints", False):
        raise ParameterError("export_state_dict needs a FaceViT built with rpe='kprpe' (CVLface's ViT-KPRPE "
                             "always has a keypoint_linear)")
    out = {}
    for key, val in model.state_dict().items():
        theirs = _rename(key, "theirs")
        if theirs is None:
            raise ParameterError(f"export_state_dict: key {key!r} has no CVLface counterpart")
        out[prefix + theirs] = val.detach().clone()
    return out


# --------------------------------------------------------------------------------------------- loading
def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The raw tensors of a ``.pt`` / ``.pth`` / ``.ckpt`` (``torch.load(weights_only=True)``) or
    ``.safetensors`` file, unwrapped and prefix-stripped; any read problem is one DataError (chapter 3)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CVLface checkpoint {path} not found; download pretrained_model/model.pt (or "
                        f"model.safetensors) from the HuggingFace repo {HF_REPO} and put it there")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise DataError(f"CVLface checkpoint {path} is a .safetensors file but the 'safetensors' package is "
                            f"not installed; pip install safetensors, or use pretrained_model/model.pt") from None
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError / OSError types
            raise DataError(f"CVLface checkpoint {path} could not be read as safetensors ({type(e).__name__}: "
                            f"{e}); the file is corrupt or truncated - download it again") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and EOF errors of a corrupt or non-weights file
            raise DataError(f"CVLface checkpoint {path} could not be read by torch.load(weights_only=True) "
                            f"({type(e).__name__}: {str(e)[:200]}); the file is corrupt, truncated or not a "
                            f"state dict - {_FIX}") from None
    return unwrap_state_dict(obj, str(path))


def read_config(path: str | Path) -> dict[str, Any]:
    """CVLface's model config next to a checkpoint (``<stem>.yaml`` or ``pretrained_model/model.yaml``),
    or {} when there is none (chapter 3)."""
    import yaml

    path = Path(path)
    for cand in (path.with_suffix(".yaml"), path.parent / "pretrained_model" / "model.yaml"):
        if cand.is_file():
            try:
                doc = yaml.safe_load(cand.read_text())
            except yaml.YAMLError as e:
                raise DataError(f"CVLface config {cand} is not valid YAML ({e}); download it again") from None
            return dict(doc) if isinstance(doc, dict) else {}
    return {}


def load_cvlface_kprpe(path: str | Path, arch: Mapping[str, Any] | None = None, *, ctx_type: str | None = None,
                       color_space: str | None = None):
    """Our KP-RPE ``FaceViT`` with a CVLface checkpoint's weights, in eval mode (chapter 3, ``paper`` profile).

    ``path``: ``pretrained_model/model.pt`` or ``model.safetensors`` of ``minchul/cvlface_adaface_vit_base_
    kprpe_webface4m`` (or any CVLface ViT-KPRPE state dict). The architecture comes from the file's shapes
    (:func:`infer_arch`); an ``arch`` (e.g. ``experiment.arch_of(cfg)``) is checked against them, and its
    non-shape keys (``drop_path``) are kept. ``ctx_type`` / ``color_space`` default to the config beside the
    file (``model.yaml``), else the released values. Feed it RGB uint8 faces and (B, 5, 2) keypoints in [0, 1]
    (``model(x, keypoints)``; ``model.embed(images, keypoints=pixel_landmarks)``).
    """
    from ..models.vit import build_vit

    sd = read_checkpoint(path)
    conf = read_config(path)
    rpe_conf = conf.get("rpe_config") or {}
    ctx = ctx_type or rpe_conf.get("ctx_type") or RELEASED_CTX_TYPE
    ratio = float(rpe_conf.get("ratio", 1.9))
    colour = color_space or str(conf.get("color_space", "RGB")).upper()
    want = dict(arch or {})
    if conf.get("name") in _PRESETS and ctx != RELEASED_CTX_TYPE:
        want.setdefault("heads", _PRESETS[conf["name"]]["heads"])
    if float(conf.get("mask_ratio", 0.0) or 0.0) != 0.0:
        raise DataError(f"CVLface config beside {path} has mask_ratio={conf['mask_ratio']}; KP-RPE checkpoints are "
                        f"trained with mask_ratio 0 - this is not a KP-RPE model")
    ours = convert_state_dict(sd, want, ctx_type=ctx, ratio=ratio, color_space=colour, source=str(path))
    full = _check_arch(want, infer_arch(sd, ctx_type=ctx, source=str(path)), str(path))
    model = build_vit(**full, rpe="kprpe", rpe_kwargs=_rpe_kwargs(sd, ctx, ratio), name="cvlface-kprpe")
    model.load_state_dict(ours, strict=True)
    return model.eval()


__all__ = ["HF_REPO", "KNOWN_PREFIXES", "RELEASED_CTX_TYPE", "convert_state_dict", "export_state_dict",
           "infer_arch", "load_cvlface_kprpe", "read_checkpoint", "read_config", "unwrap_state_dict"]
