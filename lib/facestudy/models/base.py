"""FaceModel: the one interface every face model in the book implements (chapter 0b, "The real models").

A FaceModel owns its preprocessing. Outside a model, images are uint8 RGB NHWC (numpy or torch); a model
resizes / crops them to its own input, reorders colours if it must and normalises them, all inside
:meth:`FaceModel.preprocess`. ``forward(x)`` takes the *preprocessed* float NCHW batch and returns the raw
(unnormalised) embedding, which is what margin heads such as AdaFace need. :meth:`FaceModel.embed` is the
inference path: batches, eval mode, no gradient, optional flip-sum, L2 normalisation.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ParameterError


def _as_size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ParameterError(f"input_size must be an int or (height, width), got {size!r}")
    return size  # type: ignore[return-value]


def to_nchw_float(images: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 (0..255) or float (0..1) images, NHWC or NCHW, numpy or torch -> float NCHW in 0..255.

    Validated by :func:`facestudy.data.align.check_images`: float input must be finite and in 0..1 (a
    float array in 0..255 is refused: "float images must be in 0..1; pass uint8 or divide by 255"); a
    single (H, W, 3) image gets a batch axis, a (3, H, W) array is refused as ambiguous (one channels-first
    image or three grayscale images?), grayscale is refused with the conversion to use.
    """
    from ..data.align import check_images

    _, channels_last = check_images(images, "images")
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)
        t = torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    else:
        t = images
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if device is not None:
        t = t.to(device)
    if channels_last:
        t = t.permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.float()
    return t.float() * 255.0


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a float NCHW batch (antialiased when shrinking); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


class FaceModel(nn.Module):
    """Base class: preprocessing, embedding, layer access. Subclasses implement ``forward(x)``.

    Attributes set by subclasses (constructor arguments of this base class):

    - ``input_size`` (H, W) the network's input;
    - ``embedding_dim``;
    - ``pixel_mean`` / ``pixel_std`` in 0..255 units: ``x = (pixels - mean) / std``;
    - ``crop``: optional ``(ref_h, ref_w, top, left)``: images are first resized to ``ref_h x ref_w``
      (the aligned-face frame, normally 112x112) and then cropped to ``input_size`` at (top, left)
      (the CASIA MobileFaceNet reads columns 8..103 of a 112x112 face);
    - ``bgr``: whether the network expects BGR channel order;
    - ``uses_keypoints``: the trainer passes ``keypoints=`` to ``forward`` (KP-RPE ViT).
    """

    uses_keypoints: bool = False

    def __init__(self, *, input_size: int | Sequence[int] = 112, embedding_dim: int = 512,
                 pixel_mean: float = 127.5, pixel_std: float = 127.5,
                 crop: tuple[int, int, int, int] | None = None, bgr: bool = False, name: str = "") -> None:
        super().__init__()
        self.input_size = _as_size(input_size)
        self.embedding_dim = int(embedding_dim)
        self.pixel_mean = float(pixel_mean)
        self.pixel_std = float(pixel_std)
        self.crop = tuple(int(c) for c in crop) if crop is not None else None
        self.bgr = bool(bgr)
        self.name = name or type(self).__name__.lower()
        self.weights_tag = "random"  # set by pretrained(): which weights are loaded (for the cache key)

    # ------------------------------------------------------------------------------ preprocessing
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def preprocess(self, images: Any) -> torch.Tensor:
        """Raw images (uint8 0..255 or float 0..1; NHWC or NCHW) -> normalised float NCHW at input_size.

        Differentiable for float inputs, so attacks / feature visualisation can optimise pixels.
        """
        x = to_nchw_float(images, self.device)
        if self.crop is not None:
            rh, rw, top, left = self.crop
            x = resize(x, (rh, rw))
            h, w = self.input_size
            x = x[:, :, top:top + h, left:left + w]
        else:
            x = resize(x, self.input_size)
        if self.bgr:
            x = x.flip(1)
        return (x - self.pixel_mean) / self.pixel_std

    def preprocess_keypoints(self, keypoints: Any, image_hw: tuple[int, int]) -> torch.Tensor:
        """Pixel landmarks (N, 5, 2) of raw images of size ``image_hw`` -> the network input's frame,
        normalised to [0, 1] (x / W, y / H), which is what the KP-RPE ViT consumes (chapter 3)."""
        kp = torch.as_tensor(np.asarray(keypoints) if not isinstance(keypoints, torch.Tensor) else keypoints,
                             dtype=torch.float32, device=self.device).clone()
        ih, iw = image_hw
        if self.crop is not None:
            rh, rw, top, left = self.crop
            kp[..., 0] = kp[..., 0] * (rw / iw) - left
            kp[..., 1] = kp[..., 1] * (rh / ih) - top
        else:
            kp[..., 0] = kp[..., 0] * (self.input_size[1] / iw)
            kp[..., 1] = kp[..., 1] * (self.input_size[0] / ih)
        kp[..., 0] /= self.input_size[1]
        kp[..., 1] /= self.input_size[0]
        return kp

    def preprocess_signature(self) -> str:
        """A string naming everything preprocessing does (part of the embedding-cache key)."""
        return (f"in={self.input_size};mean={self.pixel_mean};std={self.pixel_std};crop={self.crop};"
                f"bgr={self.bgr}")

    # ------------------------------------------------------------------------------ inference
    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was)

    def embed(self, images: Any, batch_size: int = 256, flip: bool = False, normalize: bool = True,
              keypoints: Any = None, progress: Any = None) -> torch.Tensor:
        """Embeddings (N, D) on the CPU for raw images (chapter 0b).

        ``flip=True`` adds the embedding of the horizontally mirrored image (the LFW "flip-sum" protocol);
        ``normalize`` L2-normalises the result. ``keypoints`` (pixel landmarks) are passed to models that
        use them. ``progress`` (optional) is called with the number of images of each finished chunk.
        """
        if batch_size < 1:
            raise ParameterError(f"batch_size must be >= 1, got {batch_size}")
        from ..data.align import check_images

        check_images(images, "embed")
        if images.ndim == 3:
            images = images[None]
        if keypoints is not None:
            kpa = keypoints.detach().cpu().numpy() if isinstance(keypoints, torch.Tensor) else np.asarray(keypoints)
            if kpa.shape != (len(images), 5, 2) or not np.isfinite(kpa).all():
                raise ParameterError(f"embed: keypoints must be finite (N, 5, 2) pixel landmarks for N={len(images)}"
                                     f" images, got shape {kpa.shape}" + ("" if kpa.shape != (len(images), 5, 2)
                                                                         else " with NaN/inf values"))
        net = self if (keypoints is not None and self.uses_keypoints) else self.inference_module()
        # CPU: sub-batches of at most 128 (folded MobileFaceNet on an idle 2-core machine, 2026-11-29: 165 img/s
        # at 32, 185 at 256; 128 bounds the activations of the big IResNets); the result does not depend on it
        step = min(batch_size, 128) if self.device.type == "cpu" else batch_size
        outs = []
        with self._eval_mode(), torch.inference_mode():
            for i in range(0, len(images), step):
                chunk = images[i:i + step]
                x = self.preprocess(chunk)
                kw = {}
                if keypoints is not None and self.uses_keypoints:
                    hw = tuple(to_nchw_float(chunk[:1]).shape[-2:])
                    kw["keypoints"] = self.preprocess_keypoints(keypoints[i:i + step], hw)
                e = net(x, **kw).float()
                if flip:
                    kf = dict(kw)
                    if "keypoints" in kf:
                        kp = kf["keypoints"].clone()
                        kp[..., 0] = 1.0 - kp[..., 0]
                        kf["keypoints"] = kp[:, [1, 0, 2, 4, 3]]
                    e = e + net(x.flip(3), **kf).float()
                outs.append(e.cpu())
                if progress is not None:
                    progress(len(chunk))
        if not outs:
            return torch.zeros(0, self.embedding_dim)
        emb = torch.cat(outs)
        return F.normalize(emb, dim=1) if normalize else emb

    # ------------------------------------------------------------------------------ fast inference
    #: ``embed`` runs a BatchNorm-folded copy (see :meth:`inference_module`); False: this module itself
    fast_inference: bool = True

    def _state_version(self) -> tuple:
        """Changes whenever a parameter or buffer is replaced or modified in place (optimiser steps,
        BatchNorm statistics, load_state_dict), or the module moves: the folded copy's cache key."""
        return tuple((k, id(t), t._version, t.device.type) for k, t in self.state_dict(keep_vars=True).items())

    def inference_module(self) -> nn.Module:
        """What :meth:`embed` runs, the fastest path giving the same embeddings (cosine >= 0.99999 against
        eager, tested; issue 21, benchmarks/peers.py): an eval-mode copy with each BatchNorm that follows a
        convolution folded into it (:func:`facestudy.models.fast.fold_batchnorm`). On an idle 2-core machine
        (2026-11-29, MobileFaceNet, 512 faces, medians of 5 interleaved runs) it embedded 185 img/s against
        158 for eager torch and 98 for the same network exported to onnxruntime. ``FACESTUDY_EMBED_BACKEND=
        onnxruntime`` selects the onnxruntime path instead for released weights (exported once to ONNX,
        cached, keyed by the weights; it measured faster than torch only on a heavily loaded machine).
        Rebuilt when the weights change; the model itself is untouched, so :meth:`features` and hooks see the
        un-fused layers. Returns ``self`` when ``fast_inference`` is False, when hooks are registered on the
        model, or when the copy fails."""
        from .fast import fold_batchnorm

        if not self.fast_inference or any(m._forward_hooks or m._forward_pre_hooks for m in self.modules()):
            return self
        key = self._state_version()
        cached = self.__dict__.get("_folded")
        if cached is not None and cached[0] == key:
            return cached[1]
        self.__dict__.pop("_folded", None)  # stale: drop it before copying the model
        folded: nn.Module | None = None
        if os.environ.get("FACESTUDY_EMBED_BACKEND", "torch").strip().lower() == "onnxruntime":
            folded = self._onnx_module()
        if folded is None:
            try:
                folded = fold_batchnorm(self)
            except Exception:  # noqa: BLE001 - e.g. a non-leaf tensor attribute that cannot be deep-copied
                return self
        self.__dict__["_folded"] = (key, folded)  # not a submodule: stays out of state_dict / parameters
        return folded

    def _onnx_module(self) -> nn.Module | None:
        """Released weights on the CPU with onnxruntime installed: the model exported once to ONNX (cache
        file keyed by the weights) in an onnxruntime session, which measured faster than eager and folded
        torch at two threads (benchmarks/peers.py). None otherwise (trained-here weights change every epoch:
        an export per change would cost more than it saves) or when the export fails."""
        from . import fast

        if (self.weights_tag == "random" or self.device.type != "cpu" or self.uses_keypoints
                or not fast.ort_available()):
            return None
        try:
            from ..data.store import cache_dir

            h, w = self.input_size
            path = cache_dir() / "onnx" / f"{self.weights_tag}-{self.weights_hash()}-{h}x{w}.onnx"
            fast.export(self.eval(), torch.zeros(1, 3, h, w), path, {0: "n"}, ("embedding",))
            return fast.OrtModule(fast.session(path))
        except Exception:  # noqa: BLE001 - any export/session failure: folded torch instead
            return None

    # ------------------------------------------------------------------------------ internals
    def layer_names(self) -> list[str]:
        """Names accepted by :meth:`features` (named submodules, plus ``"embedding"`` = the output)."""
        return [n for n, _ in self.named_modules() if n] + ["embedding"]

    @contextlib.contextmanager
    def hooks(self, layers: Sequence[str], store: dict[str, list], detach: bool = True) -> Iterator[None]:
        """Forward hooks on named submodules appending outputs to ``store[name]``; removed on exit."""
        modules = dict(self.named_modules())
        bad = [n for n in layers if n != "embedding" and n not in modules]
        if bad:
            sample = ", ".join(self.layer_names()[:40])
            raise ParameterError(f"unknown layer(s) {bad} for {self.name}; valid names include: {sample} ...")
        handles = []

        def make(name: str):
            def hook(_m, _inp, out):
                o = out[0] if isinstance(out, (tuple, list)) else out
                store.setdefault(name, []).append(o.detach() if detach else o)
            return hook

        for n in layers:
            if n != "embedding":
                handles.append(modules[n].register_forward_hook(make(n)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def features(self, images: Any, layers: Sequence[str], batch_size: int = 256, grad: bool = False,
                 preprocessed: bool = False) -> dict[str, torch.Tensor]:
        """Outputs of named layers for raw images (FaceMINT, chapter 4, reads activations with it).

        Hooks are removed afterwards. ``grad=False`` (default): eval mode, no gradient, batched, results
        on the CPU. ``grad=True``: one pass in eval mode that keeps the graph (for activation maximisation),
        results on the model's device. ``preprocessed=True`` skips :meth:`preprocess` (input already normalised).
        """
        layers = list(layers)
        if not layers:
            raise ParameterError("features() needs at least one layer name; see model.layer_names()")
        store: dict[str, list] = {}
        if grad:
            with self._eval_mode(), self.hooks(layers, store, detach=False):
                x = images if preprocessed else self.preprocess(images)
                out = self(x)
            if "embedding" in layers:
                store["embedding"] = [out]
            return {n: store[n][0] for n in layers}
        with self._eval_mode(), torch.no_grad(), self.hooks(layers, store):
            for i in range(0, len(images), batch_size):
                chunk = images[i:i + batch_size]
                x = chunk.to(self.device) if preprocessed else self.preprocess(chunk)
                out = self(x)
                if "embedding" in layers:
                    store.setdefault("embedding", []).append(out)
        return {n: torch.cat([t.float().cpu() for t in store[n]]) for n in layers}

    def weights_hash(self) -> str:
        """sha1 of the parameters and buffers (part of the embedding-cache key)."""
        import hashlib

        h = hashlib.sha1()
        for k, v in sorted(self.state_dict().items()):
            h.update(k.encode())
            t = v.detach().cpu().contiguous()
            h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
        return h.hexdigest()[:16]


def n_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of a module."""
    return sum(p.numel() for p in module.parameters())
