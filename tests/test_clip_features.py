"""Paper Table 5's CLIP row: patches clustered on CLIP image features. A tiny random open_clip
model (a config JSON of our own) stands in for ViT-B-32; the features stage writes the same
bank files as DIFT, each row the image tower's embedding of its patch."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.bank import read_jsonl
from distill.clip_features import load_clip
from distill.data import build_source
from distill.data.images import resize_rgb
from distill.errors import ModelError
from distill.pipeline import run
from tests.conftest import compose

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 16, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "tiny-clip-test.json"
    path.write_text(json.dumps(TINY))
    return path


def test_clip_features_are_the_image_towers_embeddings(tiny_clip, tmp_path):
    cfg = compose(
        "distill",
        [
            "experiment=smoke",
            "features=clip",
            f"features.clip.model={tiny_clip}",
            "features.clip.pretrained=null",
            f"paths.output_dir={tmp_path}",
            "logger=none",
            "ipc=[1]",
        ],
    )
    run(cfg)
    bank = tmp_path / "bank"
    feats = np.load(bank / "features.npy")
    owners = np.load(bank / "feature_owners.npy")
    assert feats.shape[1] == 16 and len(feats) == len(owners)
    meta = json.loads((bank / "meta.json").read_text())
    assert meta["stages"]["features"]["spec"]["features"]["kind"] == "clip"
    assert meta["stages"]["cluster"]["complete"]
    assert (tmp_path / "distilled" / "ipc1" / "set.json").is_file()
    # Reference: the patch cut from its resized image, resized to 32, normalised, encoded.
    model, mean, std, size, _ = load_clip(cfg.features.clip)
    recs = read_jsonl(bank / "scores.jsonl")
    source = build_source(cfg.data)
    index_of = {it.source: i for i, it in enumerate(source.items)}
    for row in (0, len(owners) // 2, len(owners) - 1):
        ri, k = owners[row]
        r = recs[ri]
        im = resize_rgb(source.load(index_of[r["source"]]), tuple(r["size"]))
        crop = np.asarray(im.crop(tuple(r["boxes_resized"][k])), dtype=np.float32) / 255
        x = torch.from_numpy(crop).permute(2, 0, 1)[None]
        x = (
            F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
            if x.shape[-1] != size
            else x
        )
        with torch.no_grad():
            want = model.encode_image((x - mean) / std)[0].numpy()
        assert np.allclose(feats[row].astype(np.float32), want, atol=2e-3, rtol=1e-2)


def test_clip_and_dift_banks_hash_apart(tiny_clip):
    from distill.dift import features_spec

    class Bank:
        meta = {"stages": {"score": {"hash": "h"}}}
        spec = {"scoring": {"patch": 32}, "data": {"short_edge": 64}}

    cfg = compose(
        "distill", ["experiment=smoke", "features=clip", f"features.clip.model={tiny_clip}"]
    )
    spec = features_spec(cfg, Bank(), {"clip": "x"})
    assert spec["features"] == {
        "kind": "clip",
        "clip": {"model": str(tiny_clip), "pretrained": "openai"},
    }


def test_unknown_clip_model_is_named(tmp_path):
    from omegaconf import OmegaConf

    with pytest.raises(ModelError, match="not an open_clip model"):
        load_clip(OmegaConf.create({"model": "NoSuchNet", "pretrained": None}))
    with pytest.raises(ModelError, match="no such model config file"):
        load_clip(OmegaConf.create({"model": str(tmp_path / "x.json"), "pretrained": None}))
