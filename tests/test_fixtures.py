"""Miniature paper-format fixtures (``facestudy data fixtures``, issue 20): every file goes back through the
project's own readers (RecordIO, read_bin, the IResNet and CVLface loaders, the manifests' sha256 check),
and a deliberately wrong key makes the loaders fail with an error naming it."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from facestudy import data
from facestudy.data import fixtures
from facestudy.data.formats import LazyImageDataset, RecordIOReader, read_bin, unpack_record
from facestudy.errors import DataError, ParameterError

N_IDS, PER_ID = 6, 3
iresnet_mod = importlib.import_module("facestudy.models.iresnet")


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fixtures")
    table = fixtures.write_fixtures(folder, source="synthetic", identities=N_IDS, per_identity=PER_ID,
                                    pairs_per_fold=1, iresnets=(18,))
    return folder, table


@pytest.fixture
def as_data_root(fx, monkeypatch):
    """The fixtures found exactly as a user's files: data root + the manifests written beside them."""
    folder, _ = fx
    monkeypatch.setenv("FACESTUDY_DATA", str(folder))
    monkeypatch.setenv("FACESTUDY_MANIFESTS", str(folder / "manifests"))
    return folder


def test_rec_set_is_insightface_layout(fx):
    folder, _ = fx
    n = N_IDS * PER_ID
    with RecordIOReader(folder / "ms1m" / "train.rec") as rec:
        assert len(rec) == 1 + n + N_IDS
        head, _ = unpack_record(rec.read(0))
        assert head["flag"] > 0 and list(head["label"]) == [n + 1, n + 1 + N_IDS]
        for j in range(N_IDS):  # identity records: their images' key range
            h, payload = unpack_record(rec.read(n + 1 + j))
            assert payload == b"" and list(h["label"]) == [1 + j * PER_ID, 1 + (j + 1) * PER_ID]
        h, img = rec.read_image(1)
        assert img.shape == (112, 112, 3) and h["label"] == 0.0
    ds = LazyImageDataset.from_rec(folder / "ms1m" / "train.rec")  # skips header and identity records
    assert len(ds) == n and list(ds.labels) == list(np.repeat(np.arange(N_IDS), PER_ID))
    assert ds[n - 1][0].shape == (3, 112, 112)
    assert (folder / "ms1m" / "property").read_text() == f"{N_IDS},112,112"
    from facestudy.distill.study import rec_faceset  # chapter 5's paper-profile reader

    faces = rec_faceset(folder / "ms1m" / "train.rec", n_identities=2, max_per_identity=30)
    assert len(faces) == 2 * PER_ID and faces.n_identities == 2 and faces.images.shape[1:] == (112, 112, 3)
    every = rec_faceset(folder / "ms1m" / "train.rec", n_identities=10 ** 6, max_per_identity=10 ** 6)
    assert len(every) == n and every.n_identities == N_IDS  # stops at the header's end: no identity records


def test_verification_bins_read_back_in_lfw_order(fx):
    folder, _ = fx
    for name in fixtures.BIN_NAMES:
        images, issame = read_bin(folder / "insightface_bins" / f"{name}.bin")
        assert len(issame) == 20 and len(images) == 40 and images[0].shape == (112, 112, 3)
        assert issame.tolist() == [True, False] * 10  # per fold: its same pairs, then its different pairs


def test_iresnet_state_has_arcface_keys_and_loads_strictly(fx):
    folder, _ = fx
    path = folder / "checkpoints" / "arcface_iresnet18.pth"
    state = torch.load(path, weights_only=True)
    assert {"conv1.weight", "bn1.running_var", "prelu.weight", "layer1.0.downsample.0.weight",
            "layer4.1.conv2.weight", "bn2.weight", "fc.weight", "features.running_mean"} <= set(state)
    assert tuple(state["fc.weight"].shape) == (512, 512 * 7 * 7)
    model = iresnet_mod.load_arcface_state(iresnet_mod.iresnet(18), state, str(path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert model.eval()(torch.zeros(2, 3, 112, 112)).shape == (2, 512)
    # Lightning-style wrapping with a prefix, as a .ckpt holds it
    wrapped = {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}
    iresnet_mod.load_arcface_state(iresnet_mod.iresnet(18), wrapped, "ckpt", prefix="model.")


def test_a_wrong_iresnet_key_or_shape_is_a_clear_error(fx):
    folder, _ = fx
    state = torch.load(folder / "checkpoints" / "arcface_iresnet18.pth", weights_only=True)
    bad = {("layer1.0.conv_1.weight" if k == "layer1.0.conv1.weight" else k): v for k, v in state.items()}
    with pytest.raises(DataError, match=r"1 missing \(e\.g\. layer1\.0\.conv1\.weight\).*1 unexpected "
                                        r"\(e\.g\. layer1\.0\.conv_1\.weight\)"):
        iresnet_mod.load_arcface_state(iresnet_mod.iresnet(18), bad, "bad.pth")
    lenient = iresnet_mod.iresnet(18).load_state_dict(bad, strict=False)  # what a strict=False reader sees
    assert lenient.missing_keys == ["layer1.0.conv1.weight"]  # ... and would have carried on with
    with pytest.raises(DataError, match="another shape.*fc.weight"):  # IResNet-18 weights for another input
        iresnet_mod.load_arcface_state(iresnet_mod.iresnet(18, input_size=96), state, "r18.pth")
    with pytest.raises(DataError, match="does not fit iresnet50"):
        iresnet_mod.load_arcface_state(iresnet_mod.iresnet(50), state, "r18.pth")


def test_cvlface_checkpoint_loads_and_a_wrong_key_fails(fx, tmp_path):
    from facestudy.kprpe.cvlface import load_cvlface_kprpe

    folder, _ = fx
    path = folder / "checkpoints" / "cvlface_vit_kprpe_tiny.pt"
    state = torch.load(path, weights_only=True)
    assert all(k.startswith("net.") for k in state) and "net.keypoint_linear.weight" in state
    assert "net.patch_embed.proj.weight" in state and "net.feature.0.weight" in state
    model = load_cvlface_kprpe(path)  # architecture read from the shapes, config from the .yaml beside it
    _, src = fixtures.cvlface_state(fixtures.TINY_VIT, seed=0)
    x, kp = torch.rand(2, 3, 112, 112) * 2 - 1, torch.rand(2, 5, 2)
    with torch.no_grad():
        assert torch.equal(model(x, kp), src(x, kp))
    bad = {("net.blocks.0.attn.qkvv.weight" if k == "net.blocks.0.attn.qkv.weight" else k): v
           for k, v in state.items()}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(DataError, match="qkvv"):
        load_cvlface_kprpe(tmp_path / "bad.pt")


def test_manifests_find_and_verify_the_fixtures(fx, as_data_root):
    folder, table = fx
    names = {p.stem for p in (folder / "manifests").glob("*.yaml")}
    assert {"train_rec", "insightface_bins", "fr_checkpoints", "lfw"} <= names  # the project's, all of them
    for row in table[table["manifest"] != "-"].itertuples():
        assert data.locate(row.manifest, row.file) == folder / row.file  # sha256 checked against the manifest
    assert data.available("train_rec") and data.available("insightface_bins")
    entry = [f for f in data.manifest("fr_checkpoints")["files"] if f["path"].endswith("iresnet18.pth")][0]
    assert entry["size"] == (folder / entry["path"]).stat().st_size and len(entry["sha256"]) == 64
    with pytest.raises(DataError, match="arcface_iresnet100.pth"):  # not written without --big: absent
        data.locate("fr_checkpoints", "checkpoints/arcface_iresnet100.pth")


@pytest.mark.slow  # IResNet-50: 43.6 M random weights written and read back (~175 MB)
def test_chapter1_paper_reader_loads_the_iresnet50_fixture(fx, as_data_root, monkeypatch):
    from facestudy.data.store import _MANIFEST_CACHE
    from facestudy.geometry.paper import load_paper_model

    folder, _ = fx
    torch.save(fixtures.iresnet_state(50), folder / "checkpoints" / "arcface_iresnet50.pth")
    monkeypatch.setenv("FACESTUDY_MANIFESTS", "")  # the repo's manifest (no fixed sha256: any copy)
    _MANIFEST_CACHE.clear()
    model = load_paper_model("arcface_r50")
    assert model.weights_tag == "arcface_r50" and not model.training
    state = torch.load(folder / "checkpoints" / "arcface_iresnet50.pth", weights_only=True)
    state["layer3.13.bn3.weight_renamed"] = state.pop("layer3.13.bn3.weight")
    torch.save(state, folder / "checkpoints" / "arcface_iresnet50.pth")
    with pytest.raises(DataError, match="layer3.13.bn3.weight"):
        load_paper_model("arcface_r50")
    (folder / "checkpoints" / "arcface_iresnet50.pth").unlink()


def test_fixture_requests_are_checked(tmp_path):
    from facestudy import cli

    with pytest.raises(ParameterError):
        fixtures.write_fixtures(tmp_path, identities=1)
    with pytest.raises(ParameterError):
        fixtures.write_fixtures(tmp_path, source="web")
    assert cli.main(["data", "fixtures"]) == 2
    assert cli.main(["data", "fixtures", "a", "b"]) == 2


class _Foreign:  # stands for a Lightning checkpoint's pickled hyper-parameter object
    pass


def test_adaface_ir_reader_is_strict_bgr_and_never_unpickles_code(fx, as_data_root, monkeypatch):
    """AdaFace's IR layout (chapter 1, paper): a Lightning-style checkpoint loads strictly into IRNet with the
    ``model.`` prefix and the margin head's keys left out; the network reads BGR; a checkpoint of another
    depth, or one that pickles a foreign object, is a DataError that names the problem and the fix."""
    from facestudy.data.store import _MANIFEST_CACHE
    from facestudy.geometry.paper import load_paper_model
    from facestudy.models.irnet import IRNet

    ck = fixtures.adaface_checkpoint(18)
    assert "head.kernel" in ck["state_dict"] and all(k.startswith(("model.", "head.")) for k in ck["state_dict"])
    keys = {k[len("model."):] for k in ck["state_dict"] if k.startswith("model.")}
    assert {"input_layer.0.weight", "body.0.res_layer.4.weight", "body.2.shortcut_layer.0.weight",
            "output_layer.3.weight", "output_layer.4.running_var"} <= keys
    assert "body.0.shortcut_layer.0.weight" not in keys  # 64 -> 64, stride 2: a max-pool shortcut
    assert "output_layer.4.weight" not in keys  # the embedding BatchNorm has no affine parameters
    model = iresnet_mod.load_arcface_state(IRNet(18), ck, "ir18.ckpt", "model.", layout="AdaFace IR").eval()
    img = np.random.default_rng(0).integers(0, 255, (2, 112, 112, 3), dtype=np.uint8)
    x = model.preprocess(img)
    assert model.bgr and torch.allclose(x[:, 0], (torch.from_numpy(img[..., 2]).float() - 127.5) / 127.5)
    e = model.embed(img)
    assert e.shape == (2, 512) and torch.isfinite(e).all()

    folder, _ = fx
    path = folder / "checkpoints" / "adaface_ir101_webface4m.ckpt"
    monkeypatch.setenv("FACESTUDY_MANIFESTS", "")  # the repo's manifest (no fixed sha256: any copy)
    _MANIFEST_CACHE.clear()
    torch.save(ck, path)  # an IR-18 where the IR-101 belongs
    with pytest.raises(DataError, match=r"does not fit ir100 \(AdaFace IR keys\).*missing"):
        load_paper_model("adaface_r100")
    torch.save({**ck, "hyper_parameters": _Foreign()}, path)
    with pytest.raises(DataError, match="never unpickles code.*state_dict"):
        load_paper_model("adaface_r100")
    path.unlink()
