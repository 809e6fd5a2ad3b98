"""Chapter 3: loading CVLface KP-RPE ViT checkpoints (facestudy.kprpe.cvlface).

The golden test compares our converted model with the output of CVLface's own ``VisionTransformerWithKPRPE``
(mk-minchul/CVLface, ``run_v1/models/vit_kprpe``) at a tiny size. That output was computed once, outside the
repo, from CVLface's code; ``tests/data/cvlface_tiny_golden.json`` holds only data: CVLface's key names and
shapes, the seed of :func:`fill_tensor` that gives every tensor's values, the seed of :func:`golden_inputs`,
and CVLface's output embeddings.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from pathlib import Path

import pytest
import torch

from facestudy.errors import DataError, ParameterError
from facestudy.kprpe.cvlface import (
    convert_state_dict,
    export_state_dict,
    infer_arch,
    load_cvlface_kprpe,
    unwrap_state_dict,
)
from facestudy.models.vit import build_vit

GOLDEN = Path(__file__).parent / "data" / "cvlface_tiny_golden.json"
ARCFACE_KP = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
TINY = dict(input_size=48, patch=8, dim=32, depth=2, heads=2, mlp_ratio=3.0, embedding_dim=32)


# ------------------------------------------------------------------ deterministic values (shared with the
# one-off CVLface run that produced the golden file: value = fill_tensor(key, shape, seed))
def fill_tensor(key: str, shape: list[int] | tuple[int, ...], seed: int) -> torch.Tensor:
    """Seeded, scale-aware values for a CVLface state-dict entry (key in CVLface's layout, no prefix)."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(7, dtype=torch.long)
    g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    shape = tuple(int(s) for s in shape)
    z = torch.randn(shape, generator=g)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith("running_mean"):
        return 0.1 * z
    if re.search(r"(norm\d?|feature\.[13])\.weight$", key):
        return 1.0 + 0.1 * z
    if key.startswith("keypoint_linear"):
        return 0.5 * z  # strong KP-RPE biases, so the comparison exercises them
    if key == "pos_embed" or key.endswith("bias"):
        return 0.1 * z
    return z / math.sqrt(math.prod(shape[1:]))


def golden_inputs(seed: int, batch: int = 2, size: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A preprocessed image batch and (B, 5, 2) keypoints in [0, 1] (ArcFace template, shifted, jittered)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 3, size, size), generator=g)
    base = torch.tensor(ARCFACE_KP) / 112.0
    shift = torch.linspace(-0.15, 0.15, batch).view(batch, 1, 1) * torch.tensor([1.0, 0.5])
    kp = (base + shift + 0.03 * torch.randn((batch, 5, 2), generator=g)).clamp(0.0, 1.0)
    return x, kp


def _golden() -> dict:
    return json.loads(GOLDEN.read_text())


def _golden_state_dict(golden: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: fill_tensor(k, shape, golden["fill_seed"]) for k, shape, _ in golden["keys"]}


def _tiny_model(seed: int = 0, randomise_rpe: bool = True, **arch):
    torch.manual_seed(seed)
    model = build_vit(**{**TINY, **arch}, rpe="kprpe").eval()
    if randomise_rpe:  # KP-RPE is zero-initialised; give it weights so that it matters
        with torch.no_grad():
            model.rpe.net.weight.normal_(0, 0.5)
            model.rpe.net.bias.normal_(0, 0.5)
        for m in model.head:
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


# ------------------------------------------------------------------ golden comparison with CVLface's code
def test_golden_fixture_is_cvlface_layout():
    golden = _golden()
    keys = [k for k, _, _ in golden["keys"]]
    assert "keypoint_linear.weight" in keys and "patch_embed.proj.weight" in keys and "feature.3.running_var" in keys
    cfg = golden["config"]
    model = _tiny_model(randomise_rpe=False, input_size=cfg["img_size"], patch=cfg["patch_size"],
                        dim=cfg["embed_dim"], depth=cfg["depth"], heads=cfg["num_heads"],
                        mlp_ratio=float(cfg["mlp_ratio"]), embedding_dim=cfg["num_classes"])
    exported = export_state_dict(model)
    assert set(exported) == set(keys)  # our exporter reproduces CVLface's exact key set ...
    assert {k: list(v.shape) for k, v in exported.items()} == {k: s for k, s, _ in golden["keys"]}  # ... and shapes


def test_golden_output_matches_cvlface():
    golden = _golden()
    sd = _golden_state_dict(golden, prefix=golden["prefix"])
    x, kp = golden_inputs(golden["input_seed"])
    assert float(x.sum()) == pytest.approx(golden["input_checksums"]["x_sum"], abs=1e-3)
    assert float(kp.sum()) == pytest.approx(golden["input_checksums"]["kp_sum"], abs=1e-5)
    arch = infer_arch(sd)
    assert arch["heads"] == golden["config"]["num_heads"] and arch["depth"] == golden["config"]["depth"]
    model = build_vit(**arch, rpe="kprpe").eval()
    model.load_state_dict(convert_state_dict(sd, arch), strict=True)
    with torch.no_grad():
        out = model(x, kp)
    expected = torch.tensor(golden["expected"])
    assert torch.allclose(out, expected, atol=2e-5, rtol=1e-5), float((out - expected).abs().max())
    # the comparison is sensitive to KP-RPE: without its bias the output is far from CVLface's
    with torch.no_grad():
        model.rpe.net.weight.zero_()
        model.rpe.net.bias.zero_()
        plain = model(x, kp)
    assert float((plain - expected).abs().max()) > 100 * 2e-5


# ------------------------------------------------------------------ conversion without CVLface's code
def test_round_trip_is_bit_identical():
    src = _tiny_model(seed=1)
    x, kp = golden_inputs(5)
    for prefix in ("", "net.", "model.net.", "module."):
        dst = _tiny_model(seed=2, randomise_rpe=False)
        dst.load_state_dict(convert_state_dict(export_state_dict(src, prefix=prefix), TINY), strict=True)
        with torch.no_grad():
            assert torch.equal(src(x, kp), dst(x, kp)), prefix


def test_unwrap_nested_and_prefixed():
    sd = export_state_dict(_tiny_model(), prefix="model.net.")
    assert set(unwrap_state_dict({"state_dict": sd})) == set(export_state_dict(_tiny_model()))
    with pytest.raises(DataError, match="not tensors"):
        unwrap_state_dict({"epoch": 3, "optimizer": {}}, "ckpt.pt")
    with pytest.raises(DataError, match="empty"):
        unwrap_state_dict({}, "ckpt.pt")


def test_infer_arch_of_vit_base_from_shapes_only():
    with torch.device("meta"):
        base = build_vit(112, 8, 512, 24, 16, 3.0, embedding_dim=512, rpe="kprpe")
    arch = infer_arch(export_state_dict(base, prefix="net."))
    assert arch == {"input_size": 112, "patch": 8, "dim": 512, "depth": 24, "heads": 16, "mlp_ratio": 3.0,
                    "embedding_dim": 512, "drop_path": 0.0}
    assert export_state_dict(base)["keypoint_linear.weight"].shape == (49 * 16 * 24, 10)


def test_key_and_shape_errors_name_the_offenders():
    good = export_state_dict(_tiny_model(), prefix="net.")
    bad = dict(good, **{"net.blocks.0.attn.rel_table": torch.zeros(3)})
    with pytest.raises(DataError, match=r"my\.pt.*unknown keys: blocks\.0\.attn\.rel_table"):
        convert_state_dict(bad, TINY, source="my.pt")
    bad = {k: v for k, v in good.items() if k != "net.blocks.1.mlp.fc2.bias"}
    with pytest.raises(DataError, match=r"missing keys.*blocks\.1\.mlp\.2\.bias"):
        convert_state_dict(bad, TINY)
    bad = dict(good, **{"net.norm.weight": torch.ones(31)})
    with pytest.raises(DataError, match=r"shape mismatches: norm\.weight \(31,\)"):
        convert_state_dict(bad, TINY)
    with pytest.raises(DataError, match=r"depth=4 but the file has 2"):
        convert_state_dict(good, {**TINY, "depth": 4})
    with pytest.raises(ParameterError, match="unknown keys"):
        convert_state_dict(good, {"layers": 3})
    resnet_like = {"conv1.weight": torch.zeros(64, 3, 3, 3), "fc.weight": torch.zeros(512, 10)}
    with pytest.raises(DataError, match="not a CVLface ViT"):
        convert_state_dict(resnet_like, source="r50.pth")


def test_qkv_bias_mask_token_and_missing_counters():
    good = export_state_dict(_tiny_model())
    extra = dict(good, mask_token=torch.zeros(1, 1, 32), **{"blocks.0.attn.qkv.bias": torch.zeros(96)})
    extra = {k: v for k, v in extra.items() if not k.endswith("num_batches_tracked")}
    ours = convert_state_dict(extra, TINY)
    assert "mask_token" not in ours and int(ours["head.1.num_batches_tracked"]) == 0
    with pytest.raises(DataError, match="non-zero qkv bias"):
        convert_state_dict(dict(good, **{"blocks.0.attn.qkv.bias": torch.ones(96)}), TINY)


def test_heads_for_other_ctx_types_must_be_given():
    model = build_vit(**TINY, rpe="kprpe", rpe_kwargs={"ctx_type": "rel_keypoint"})
    sd = export_state_dict(model)
    with pytest.raises(DataError, match="heads"):
        convert_state_dict(sd, None, ctx_type="rel_keypoint")
    ours = convert_state_dict(sd, {"heads": 2}, ctx_type="rel_keypoint")
    assert ours["rpe.net.weight"].shape == (49, 10)


# ------------------------------------------------------------------ files
def test_load_pt_with_config_and_safetensors(tmp_path):
    src = _tiny_model(seed=3)
    x, kp = golden_inputs(7)
    with torch.no_grad():
        ref = src(x, kp)
    folder = tmp_path / "pretrained_model"
    folder.mkdir()
    torch.save(export_state_dict(src, prefix="net."), folder / "model.pt")
    (folder / "model.yaml").write_text("name: tiny\noutput_dim: 32\ncolor_space: RGB\nmask_ratio: 0.0\n"
                                       "rpe_config:\n  ctx_type: rel_keypoint_splithead_unshared\n  ratio: 1.9\n")
    model = load_cvlface_kprpe(folder / "model.pt", arch={**TINY, "drop_path": 0.1})
    assert not model.training and model.uses_keypoints
    with torch.no_grad():
        assert torch.equal(model(x, kp), ref)
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(export_state_dict(src, prefix="model.net."), str(tmp_path / "model.safetensors"))
    model = load_cvlface_kprpe(tmp_path / "model.safetensors")  # finds pretrained_model/model.yaml beside it
    with torch.no_grad():
        assert torch.equal(model(x, kp), ref)


def test_bgr_config_is_folded_into_the_patch_embedding(tmp_path):
    src = _tiny_model(seed=4)
    torch.save(export_state_dict(src, prefix="net."), tmp_path / "model.pt")
    (tmp_path / "model.yaml").write_text("color_space: BGR\n")
    model = load_cvlface_kprpe(tmp_path / "model.pt")
    x, kp = golden_inputs(8)
    with torch.no_grad():  # CVLface flips RGB -> BGR inside forward when its config says BGR
        assert torch.allclose(model(x, kp), src(x.flip(1), kp), atol=1e-6)


def test_bad_files_give_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="not found.*minchul/cvlface"):
        load_cvlface_kprpe(tmp_path / "absent.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(DataError, match=r"corrupt\.pt could not be read"):
        load_cvlface_kprpe(corrupt)
    truncated = tmp_path / "truncated.pt"
    torch.save(export_state_dict(_tiny_model(), prefix="net."), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(DataError, match="could not be read"):
        load_cvlface_kprpe(truncated)
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(DataError, match=r"wrong\.pt.*not a CVLface ViT"):
        load_cvlface_kprpe(wrong)
    st = tmp_path / "bad.safetensors"
    st.write_bytes(b"\x00" * 64)
    pytest.importorskip("safetensors")
    with pytest.raises(DataError, match="safetensors"):
        load_cvlface_kprpe(st)


def test_export_needs_kprpe():
    with pytest.raises(ParameterError, match="kprpe"):
        export_state_dict(build_vit(**TINY))


# ------------------------------------------------------------------ the user-supplied ViT-base (paper profile)
@pytest.mark.realdata
def test_real_cvlface_checkpoint_loads():
    from facestudy import data

    if not data.available("fr_checkpoints"):
        pytest.skip("no user-supplied checkpoints (data_manifests/fr_checkpoints.yaml)")
    path = data.find("fr_checkpoints", "checkpoints/cvlface_vit_base_kprpe_webface4m.pt")
    if path is None:
        pytest.skip("the CVLface KP-RPE ViT-base checkpoint is not supplied")
    model = load_cvlface_kprpe(path)
    assert (model.depth, model.heads, model.dim) == (24, 16, 512)
    x, kp = golden_inputs(0, batch=2, size=112)
    with torch.no_grad():
        emb = model(x, kp)
    assert emb.shape == (2, 512) and torch.isfinite(emb).all()
