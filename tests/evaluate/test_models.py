"""The model factory and checkpoint loading: every named model, every checkpoint format,
and errors that name the checkpoint and the model on a mismatch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from distill.errors import ConfigError, ModelError
from evaluate.models import (
    MODELS,
    ConvNet,
    SelectOutputs,
    build_model,
    count_outputs,
    create_model,
    load_weights,
    read_checkpoint,
)
from tests.evaluate.conftest import EVAL_CONF

# (name, input side): the cheap sides that every architecture accepts.
SIZES = {"vit_b_16": 32, "swin_t": 32, "convnet4": 32, "convnet5": 32, "convnet6": 64}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_factory_builds_each_model_with_its_outputs(name):
    size = SIZES.get(name, 32)
    model = create_model(name, 7, image_size=size)
    assert count_outputs(model, size) == 7


def test_group_options_name_factory_models():
    for group in ("student", "teacher"):
        for f in (EVAL_CONF / group).glob("*.yaml"):
            if f.stem.startswith("_"):  # shared defaults (teacher/_base.yaml), not a model
                continue
            spec = OmegaConf.load(f)
            assert spec.name == f.stem and spec.name in MODELS, f


def test_cifar_stem_and_convnet_shapes():
    m = create_model("resnet18_cifar", 10, image_size=32)
    assert m.conv1.stride == (1, 1) and isinstance(m.maxpool, torch.nn.Identity)
    c = create_model("convnet3", 10, image_size=32, width=16, norm="instance")
    assert isinstance(c.features[1], torch.nn.GroupNorm) and c.classifier.in_features == 16 * 4 * 4
    with pytest.raises(ConfigError, match="multiple of 8"):
        create_model("convnet3", 10, image_size=28)
    with pytest.raises(ConfigError, match="unknown model 'resnet19'"):
        create_model("resnet19", 10)


def test_timm_and_torchvision_prefixes_and_target():
    assert count_outputs(create_model("timm:resnet10t", 5, image_size=32), 32) == 5
    assert count_outputs(create_model("tv:resnet34", 5, image_size=32), 32) == 5
    spec = OmegaConf.create(
        {
            "name": "mine",
            "model": {"_target_": "evaluate.models.ConvNet", "num_classes": 4, "width": 8},
        }
    )
    m = build_model(spec, 4, 32, "student")
    assert isinstance(m, ConvNet) and count_outputs(m, 32) == 4


def test_select_outputs_keeps_columns_in_order():
    base = torch.nn.Linear(2, 6)
    sel = SelectOutputs(base, [4, 1])
    x = torch.randn(3, 2)
    assert torch.equal(sel(x), base(x)[:, [4, 1]])


class _Wrap(L.LightningModule):
    def __init__(self, model):
        super().__init__()
        self.model = model


@pytest.mark.parametrize(
    "fmt", ["plain", "lightning", "torchvision_ref", "dataparallel", "safetensors", "module"]
)
def test_checkpoint_formats_load(tmp_path, fmt):
    src = ConvNet(3, width=8)
    sd = src.state_dict()
    path = tmp_path / ("w.safetensors" if fmt == "safetensors" else "w.pt")
    if fmt == "plain":
        torch.save(sd, path)
    elif fmt == "lightning":
        trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_checkpointing=False)
        trainer.strategy.connect(_Wrap(src))
        trainer.save_checkpoint(path)
        assert all(
            k.startswith("model.") for k in torch.load(path, weights_only=False)["state_dict"]
        )
    elif fmt == "torchvision_ref":  # RDED / torchvision reference scripts
        torch.save({"model": sd, "epoch": 3, "args": {"lr": 0.1}}, path)
    elif fmt == "dataparallel":
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    elif fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(src, path)
    dst = ConvNet(3, width=8)
    load_weights(dst, path, "teacher", "convnet3", num_classes=3)
    for k, v in dst.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_checkpoint_errors_name_both_sides(tmp_path):
    torch.save(ConvNet(1000, width=8).state_dict(), tmp_path / "in1k.pt")
    with pytest.raises(ModelError) as e:
        load_weights(
            ConvNet(10, width=8), tmp_path / "in1k.pt", "teacher", "convnet3", num_classes=10
        )
    msg = str(e.value)
    assert "in1k.pt" in msg and "1000 outputs" in msg and "10 classes" in msg
    torch.save(ConvNet(10, width=16).state_dict(), tmp_path / "wide.pt")
    with pytest.raises(ModelError, match=r"wide.pt does not fit teacher=convnet3.*shape"):
        load_weights(ConvNet(10, width=8), tmp_path / "wide.pt", "teacher", "convnet3")
    torch.save(create_model("resnet18", 10).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ModelError, match=r"missing from the checkpoint.*not in convnet3"):
        load_weights(ConvNet(10, width=8), tmp_path / "r18.pt", "teacher", "convnet3")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt cannot be read"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"epoch": 3}, tmp_path / "noweights.pt")
    with pytest.raises(ModelError, match="no weights"):
        read_checkpoint(tmp_path / "noweights.pt")
    with pytest.raises(ModelError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")
