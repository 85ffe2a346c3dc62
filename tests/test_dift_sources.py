"""``features.crop_from``: DIFT features cropped from the image latent or the image's U-Net map
(issue 16's cheaper paths), each against a slow reference written out here, the exact path as
their limit, and the config and bank plumbing."""

import numpy as np
import pytest
import torch

from distill.bank import read_jsonl, read_meta
from distill.data.classes import ClassInfo
from distill.dift import DiftModule, features_spec, window
from distill.errors import ConfigError
from distill.pipeline import run
from distill.scoring.relevance import stable_seed
from distill.validate import check_config
from tests.conftest import smoke_cfg
from tests.test_stage2 import feature_cfg

CLASSES = [ClassInfo(0, "a", "beagle"), ClassInfo(1, "b", "dingo")]


def reference_maps(backend, z, label, key, ensemble=2):
    """The up block's map of latent ``z`` (1, C, h, w): full U-Net, one draw at a time."""
    block = backend.unet.up_blocks[1]
    captured = []
    handle = block.register_forward_hook(lambda m, i, o: captured.append(o))
    ids = backend.tokenizer(
        [f"An image of {CLASSES[label].name}"],
        padding="max_length",
        max_length=77,
        return_tensors="pt",
    ).input_ids
    emb = backend.text_encoder(ids)[0]
    a = float(backend.scheduler.alphas_cumprod[160])
    acc = 0
    try:
        for i in range(ensemble):
            g = torch.Generator().manual_seed(stable_seed("dift", 0, *key, i))
            eps = torch.randn(z.shape[1:], generator=g)[None]
            captured.clear()
            backend.unet(
                a**0.5 * z + (1 - a) ** 0.5 * eps, torch.tensor([160]), encoder_hidden_states=emb
            )
            acc = acc + captured[0]
    finally:
        handle.remove()
    return acc / ensemble


def encode(backend, image):
    return backend.vae.encode(image[None].float() / 127.5 - 1).latent_dist.mean * 0.18215


def test_window_takes_every_covered_cell_and_at_least_one():
    # 64 px on an 8-cell grid: 8 px per cell.
    assert window((0, 0, 64, 64), 1 / 8, 1 / 8, 8, 8) == (0, 0, 8, 8)
    assert window((16, 8, 48, 40), 1 / 8, 1 / 8, 8, 8) == (2, 1, 6, 5)
    assert window((4, 4, 12, 12), 1 / 8, 1 / 8, 8, 8) == (0, 0, 2, 2)  # straddles 4 cells
    assert window((60, 60, 61, 61), 1 / 8, 1 / 8, 8, 8) == (7, 7, 8, 8)  # never empty
    assert window((-5, 0, 90, 64), 1 / 8, 1 / 8, 8, 8) == (0, 0, 8, 8)  # clipped to the grid


@torch.no_grad()
@pytest.mark.parametrize("mode", ["image_latent", "image_map"])
def test_whole_image_box_gives_the_exact_feature(tiny_backend, mode):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    exact = DiftModule(tiny_backend, CLASSES, feature_cfg(ensemble=2), size=32)
    cheap = DiftModule(tiny_backend, CLASSES, feature_cfg(ensemble=2, crop_from=mode), size=32)
    want = exact.features(image[None], [1], [("img", 0)])
    got = cheap.images_features([image], [[[0, 0, 32, 32]]], [1], ["img"])[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_image_map_pools_each_box_window_of_the_whole_map(tiny_backend):
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)  # H x W = 32 x 48
    boxes = [[0, 0, 32, 32], [16, 0, 48, 32], [8, 8, 24, 24]]
    module = DiftModule(
        tiny_backend, CLASSES, feature_cfg(ensemble=2, crop_from="image_map"), size=32
    )
    got = module.images_features([image], [boxes], [0], ["img"])[0]
    fmap = reference_maps(tiny_backend, encode(tiny_backend, image), 0, ("img", 0))[0]
    fh, fw = fmap.shape[-2:]
    sy, sx = fh / 32, fw / 48
    want = torch.stack(
        [
            fmap[
                :, int(y0 * sy) : int(np.ceil(y1 * sy)), int(x0 * sx) : int(np.ceil(x1 * sx))
            ].mean(dim=(1, 2))
            for x0, y0, x1, y1 in boxes
        ]
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got[0] - got[1]).abs().max() > 1e-4  # left and right halves differ


@torch.no_grad()
def test_image_latent_runs_each_box_latent_with_its_own_noise(tiny_backend):
    torch.manual_seed(2)
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    boxes = [[16, 0, 48, 32], [0, 8, 16, 24]]  # the second is half the patch: resized
    module = DiftModule(
        tiny_backend, CLASSES, feature_cfg(ensemble=2, crop_from="image_latent"), size=32
    )
    got = module.images_features([image], [boxes], [1], ["img"])[0]
    z = encode(tiny_backend, image)
    f = 32 // z.shape[-2]
    want = []
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        zc = z[:, :, y0 // f : y1 // f, x0 // f : x1 // f]
        zc = torch.nn.functional.interpolate(
            zc, size=(32 // f, 32 // f), mode="bilinear", align_corners=False
        )
        want.append(reference_maps(tiny_backend, zc, 1, ("img", k))[0].mean(dim=(1, 2)))
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_crop_from_is_checked_and_hashed_only_when_set(tmp_path):
    with pytest.raises(ConfigError, match="features.crop_from='latent'"):
        check_config(smoke_cfg(tmp_path, "features.crop_from=latent"))

    class Bank:
        meta = {"stages": {"score": {"hash": "h"}}}
        spec = {"scoring": {"patch": 32}, "data": {"short_edge": 32}}

    class Backend:
        def fingerprint(self):
            return "m"

    exact = features_spec(smoke_cfg(tmp_path), Bank, Backend())
    assert "crop_from" not in exact["features"]  # banks made before the option keep their hash
    cheap = features_spec(smoke_cfg(tmp_path, "features.crop_from=image_map"), Bank, Backend())
    assert cheap["features"]["crop_from"] == "image_map"
    with pytest.raises(ConfigError, match="DIFT features only"):
        features_spec(
            smoke_cfg(tmp_path, "features=clip", "+features.crop_from=image_map"), Bank, Backend()
        )


def test_image_map_through_the_pipeline(tmp_path):
    """The features stage with crop_from=image_map: every patch gets a finite feature, the
    stage's recorded settings name the mode (so its hash differs from the exact path's), and
    the run selects and writes its set."""
    run(smoke_cfg(tmp_path, "ipc=[1]", "scoring.topk=2", "features.crop_from=image_map"))
    bank = tmp_path / "bank"
    feats = np.load(bank / "features.npy")
    n = sum(len(r["scores"]) for r in read_jsonl(bank / "scores.jsonl"))
    assert feats.shape[0] == n > 0 and np.isfinite(feats).all()
    assert read_meta(bank)["stages"]["features"]["spec"]["features"]["crop_from"] == "image_map"
    assert (tmp_path / "distilled" / "ipc1" / "set.json").is_file()


@torch.no_grad()
@pytest.mark.parametrize("mode", ["image_latent", "image_map"])
def test_a_batch_of_images_gives_each_image_its_own_features(tiny_backend, mode):
    """Images of one size share their calls; each still gets its own boxes' features, in
    order, as when it comes alone (an image with no boxes gets none)."""
    torch.manual_seed(3)
    images = [
        torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8),
        torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8),
        torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8),
        torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8),
    ]
    boxes = [[[0, 0, 32, 32], [16, 0, 48, 32]], [[0, 0, 32, 32]], [[8, 0, 40, 32]], []]
    labels, sources = [0, 1, 1, 0], ["a", "b", "c", "d"]
    module = DiftModule(tiny_backend, CLASSES, feature_cfg(ensemble=2, crop_from=mode), size=32)
    batched = module.images_features(images, boxes, labels, sources)
    for i in range(3):
        alone = module.images_features([images[i]], [boxes[i]], [labels[i]], [sources[i]])[0]
        torch.testing.assert_close(batched[i], alone, rtol=1e-4, atol=1e-5)
    assert [len(f) for f in batched] == [2, 1, 1, 0]
