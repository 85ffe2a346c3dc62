"""The diffusion backend on tiny models built in code and reloaded from disk, offline."""

import json

import pytest
import torch

from distill.diffusion import DiffusionBackend
from distill.diffusion.architectures import save_components, tiny_components
from distill.errors import ModelError


def test_round_trip_through_from_pretrained(tiny_model_dir):
    assert (
        json.loads((tiny_model_dir / "model_index.json").read_text())["unet"][1]
        == "UNet2DConditionModel"
    )
    a = DiffusionBackend.load(str(tiny_model_dir), dtype="fp32")
    b = DiffusionBackend.load(str(tiny_model_dir), dtype="fp32")
    for (na, pa), (nb, pb) in zip(
        a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True
    ):
        assert na == nb and torch.equal(pa, pb)
    assert a.vae_factor == 8 and a.latent_channels == 4 and a.num_train_timesteps == 1000


def test_encode_images_uses_posterior_mean_times_scale(tiny_backend):
    x = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    z = tiny_backend.encode_images(x)
    assert z.shape == (2, 4, 8, 12) and z.dtype == torch.float32
    ref = tiny_backend.vae.encode(x.float() / 127.5 - 1).latent_dist.mean * 0.18215
    torch.testing.assert_close(z, ref)
    # Deterministic: the mean, not a sample.
    torch.testing.assert_close(tiny_backend.encode_images(x), z)
    # Float input in [0, 1] means the same image.
    torch.testing.assert_close(tiny_backend.encode_images(x.float() / 255), z, atol=1e-5, rtol=1e-4)


def test_vae_factor_read_from_config():
    comps = tiny_components()
    from diffusers import AutoencoderKL

    comps["vae"] = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
    )
    b = DiffusionBackend.from_components(comps, "f4", torch.float32)
    assert b.vae_factor == 4
    assert b.encode_images(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape[-1] == 8


def test_add_noise_is_standard_ddpm(tiny_backend):
    z, eps = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 400, 999])
    out = tiny_backend.add_noise(z, eps, t)
    ac = tiny_backend.scheduler.alphas_cumprod
    for i, ti in enumerate(t.tolist()):
        a = float(ac[ti])
        torch.testing.assert_close(out[i], a**0.5 * z[i] + (1 - a) ** 0.5 * eps[i])
    # And it agrees with the scheduler's own add_noise.
    ref = tiny_backend.scheduler.add_noise(z, eps, t)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_prompt_embeddings_cached(tiny_backend, monkeypatch):
    tiny_backend.clear_prompt_cache()
    e1 = tiny_backend.embed_prompts(["An image of beagle", "An image of ."])
    assert e1.shape == (2, 77, 32)
    calls = []
    orig = tiny_backend.text_encoder.forward
    monkeypatch.setattr(
        tiny_backend.text_encoder, "forward", lambda *a, **k: calls.append(1) or orig(*a, **k)
    )
    e2 = tiny_backend.embed_prompts(["An image of .", "An image of beagle"])
    assert not calls
    torch.testing.assert_close(e2[1], e1[0])


def test_v_prediction_is_converted_to_epsilon(tiny_model_dir):
    b = DiffusionBackend.load(str(tiny_model_dir), dtype="fp32")
    z_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 800])
    emb = b.embed_prompts(["a", "b"])
    v = b.unet(z_t, t, encoder_hidden_states=emb).sample
    b.scheduler.register_to_config(prediction_type="v_prediction")
    eps = b.predict_eps(z_t, t, emb)
    a = b.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1).double()
    torch.testing.assert_close(eps, ((1 - a).sqrt() * z_t + a.sqrt() * v).float())


@pytest.mark.parametrize("dtype,torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_dtypes(tiny_model_dir, dtype, torch_dtype):
    b = DiffusionBackend.load(str(tiny_model_dir), dtype=dtype)
    assert next(b.unet.parameters()).dtype == torch_dtype
    z = b.encode_images(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert z.dtype == torch_dtype
    eps = b.predict_eps(z, torch.tensor([500]), b.embed_prompts(["x"]))
    assert eps.dtype == torch_dtype and torch.isfinite(eps.float()).all()


def test_fp16_keeps_vae_in_fp32(tiny_model_dir):
    b = DiffusionBackend.load(str(tiny_model_dir), dtype="fp16")
    assert next(b.vae.parameters()).dtype == torch.float32
    assert next(b.unet.parameters()).dtype == torch.float16


def test_missing_model_errors_name_the_path(tmp_path):
    with pytest.raises(ModelError, match=str(tmp_path / "absent")):
        DiffusionBackend.load(str(tmp_path / "absent"))
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(ModelError, match="lacks the subfolders"):
        DiffusionBackend.load(str(tmp_path / "half"))


def test_hub_id_offline_fails_fast_with_advice():
    import time

    t0 = time.time()
    with pytest.raises(ModelError, match="diffusion.model=/path"):
        DiffusionBackend.load("nobody-here/no-such-model-xyz")
    assert time.time() - t0 < 30


def test_save_components_layout(tmp_path):
    out = save_components(tiny_components(), tmp_path / "m")
    for sub in ("vae", "unet", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir()
