"""ONNX export + onnxruntime execution for inference-only networks (the RetinaFace detector, the embedder).

One module is exported once into the cache (``<cache>/onnx/<name>-<key>.onnx``, written atomically; the key
hashes the weights, so new weights get a new file) and run by onnxruntime when it is installed. Everything
here is optional: :func:`ort_available` is False without onnxruntime/onnx, and callers then run torch.

The session uses the thread count facestudy chose for torch (:func:`facestudy.runtime.cpu_threads`) and
does not spin-wait between operators (``session.intra_op.allow_spinning = 0``): spinning threads are what
collapses a shared CPU (issue 21; measured in ``benchmarks/peers.py``).
"""
from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

_SESSIONS: dict[tuple[str, int], Any] = {}


def ort_available() -> bool:
    """onnxruntime and onnx import (and ``FACESTUDY_NO_ORT`` is not set)."""
    if os.environ.get("FACESTUDY_NO_ORT"):
        return False
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "run torch"
        return False
    return True


def state_key(module: nn.Module, extra: str = "") -> str:
    """sha1 (16 hex) of a module's state dict and ``extra`` (e.g. input layout): the export's cache key."""
    h = hashlib.sha1(extra.encode())
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()[:16]


def export(module: nn.Module, example: torch.Tensor, path: Path, dynamic: dict[int, str],
           output_names: Sequence[str]) -> Path:
    """Export ``module`` (eval mode, CPU copy) to ``path`` once; returns the path. Atomic (temp + rename)."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, input_names=["x"],
                          output_names=list(output_names), dynamic_axes={"x": dynamic},
                          opset_version=17, do_constant_folding=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return path


def session(path: Path, threads: int | None = None):
    """A cached onnxruntime CPU session for ``path`` with ``threads`` intra-op threads and no spin-waiting."""
    import onnxruntime as ort

    if threads is None:
        threads = torch.get_num_threads()
    key = (str(path), int(threads))
    if key not in _SESSIONS:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        _SESSIONS[key] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def run(sess, x: np.ndarray) -> list[np.ndarray]:
    """Run a one-input session on a float32 array."""
    return sess.run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``model`` in which each ``Conv2d`` directly followed by a ``BatchNorm2d``
    inside an ``nn.Sequential`` (MobileFaceNet's ConvBN, RetinaFace's blocks, ResNet downsamples) becomes one
    convolution with the BatchNorm folded in (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`) and the
    BatchNorm an ``Identity``. Same outputs up to float rounding; no gradient."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(model).eval()
    for p in folded.parameters():
        p.requires_grad_(False)
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = nn.Identity()
    folded.__dict__.pop("_folded", None)
    return folded


class OrtModule:
    """A one-input onnxruntime session called like a module: float NCHW tensor in, float tensor out (CPU)."""

    def __init__(self, sess) -> None:
        self.sess = sess

    def __call__(self, x: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.from_numpy(run(self.sess, x.detach().cpu().numpy())[0])
