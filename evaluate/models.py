"""Students and teachers by name: one factory over torchvision, timm and the dataset
distillation literature's ConvNet, plus checkpoint loading that says what does not fit.

Every model the evaluation half trains or distils from is built by `create_model` (or from a
``_target_`` node) and, for teachers, filled by `load_weights`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError, ModelError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- ConvNet


class ConvNet(nn.Module):
    """The ConvNet-D of the dataset distillation literature (DC, DSA, MTT, RDED).

    ``depth`` blocks of conv3x3 -> norm -> ReLU -> 2x2 pooling, then one linear layer on the
    flattened map. RDED evaluates with ``norm="batch"`` (its `synthesize/models.py`); the
    older papers use instance norm. The linear layer's size depends on the input, so
    ``image_size`` must be the size the model will see.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 3,
        width: int = 128,
        norm: str = "batch",
        pooling: str = "avg",
        image_size: int = 32,
        in_chans: int = 3,
    ):
        super().__init__()
        if image_size % (2**depth):
            raise ConfigError(
                f"ConvNet-{depth} halves its input {depth} times: image size {image_size} must "
                f"be a multiple of {2**depth} (set input.size)."
            )
        layers: list[nn.Module] = []
        c = in_chans
        for _ in range(depth):
            layers.append(nn.Conv2d(c, width, kernel_size=3, padding=1))
            layers.append(_norm_layer(norm, width, image_size))
            layers.append(nn.ReLU(inplace=True))
            layers.append(nn.AvgPool2d(2) if pooling == "avg" else nn.MaxPool2d(2))
            c = width
            image_size //= 2
        self.features = nn.Sequential(*layers)
        self.num_features = width * image_size * image_size
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _norm_layer(norm: str, channels: int, size: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":  # DC/DSA's "instancenorm": a GroupNorm with one group per channel
        return nn.GroupNorm(channels, channels)
    if norm == "group":
        return nn.GroupNorm(4, channels)
    if norm == "layer":
        return nn.LayerNorm([channels, size, size])
    if norm == "none":
        return nn.Identity()
    raise ConfigError(f"ConvNet norm must be batch, instance, group, layer or none; got {norm!r}")


# ----------------------------------------------------------------------------- registry


# The torchvision weights RDED evaluated with: its `models.__dict__[name](pretrained=True)`
# means IMAGENET1K_V1. "DEFAULT" would give ResNet-50/101 and MobileNet-V2 their V2 weights.
RDED_WEIGHTS = "IMAGENET1K_V1"


def torchvision_weights(arch: str, weights: str | None):
    """The weights enum member ``weights`` (e.g. ``IMAGENET1K_V1``) of a torchvision model,
    or a clear error naming the ones it has."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    name = str(weights or RDED_WEIGHTS)
    if name == "DEFAULT":
        return enum.DEFAULT
    if name not in enum.__members__:
        raise ConfigError(
            f"{arch} has no torchvision weights {name!r}; it has {list(enum.__members__)} "
            "(or DEFAULT)"
        )
    return enum[name]


def _torchvision(arch: str) -> Callable[..., nn.Module]:
    def build(
        num_classes: int, pretrained: bool, image_size: int, weights: str | None = None, **kw
    ) -> nn.Module:
        import torchvision

        if arch.startswith("vit_") and image_size != 224:
            kw.setdefault("image_size", image_size)
        if not pretrained:
            return torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kw)
        model = torchvision.models.get_model(arch, weights=torchvision_weights(arch, weights), **kw)
        return _fit_head(model, num_classes, arch)

    return build


def _resnet_cifar(arch: str) -> Callable[..., nn.Module]:
    """torchvision ResNet with the 3x3, stride-1 stem and no max-pool used for 32-64 px
    inputs (SRe2L's and RDED's ``resnet18_modified``)."""

    def build(num_classes: int, pretrained: bool, image_size: int, **kw) -> nn.Module:
        kw.pop("weights", None)
        model = _torchvision(arch)(num_classes, pretrained, image_size, **kw)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model

    return build


def _convnet(depth: int) -> Callable[..., nn.Module]:
    def build(num_classes: int, pretrained: bool, image_size: int, **kw) -> nn.Module:
        if pretrained:
            raise ConfigError(f"convnet{depth} has no pretrained weights; load a checkpoint.")
        kw.pop("weights", None)
        return ConvNet(num_classes, depth=kw.pop("depth", depth), image_size=image_size, **kw)

    return build


# Names used in configs and results tables. Plain names follow torchvision (RDED's models);
# "timm:NAME" reaches any timm model and "tv:NAME" any torchvision model.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "resnet101": _torchvision("resnet101"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "efficientnet_b0": _torchvision("efficientnet_b0"),
    "swin_t": _torchvision("swin_t"),
    "vit_b_16": _torchvision("vit_b_16"),
    "resnet18_cifar": _resnet_cifar("resnet18"),
    "resnet101_cifar": _resnet_cifar("resnet101"),
    **{f"convnet{d}": _convnet(d) for d in (3, 4, 5, 6)},
}


def create_model(
    name: str,
    num_classes: int,
    *,
    pretrained: bool = False,
    image_size: int = 224,
    weights: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a classifier by name with ``num_classes`` outputs.

    Args:
        name: a key of `MODELS`, ``timm:<timm name>`` or ``tv:<torchvision name>``.
        num_classes: outputs of the classifier head.
        pretrained: ImageNet-1K weights from timm/torchvision (needs a network or a filled
            cache); the head is replaced when ``num_classes`` is not 1000.
        weights: which torchvision weights (``IMAGENET1K_V1``, RDED's, when None; ``DEFAULT``
            for torchvision's current best); ignored by timm and ConvNets.
        image_size: input side in pixels (ConvNet's head and ViT's position table depend on it).
        **kwargs: passed to the builder (e.g. ``width`` for a ConvNet).
    """
    if name.startswith("timm:"):
        import timm

        arch = name.split(":", 1)[1]
        if not timm.is_model(arch):
            raise ConfigError(f"timm has no model {arch!r} (from {name!r})")
        return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if name.startswith("tv:"):
        return _torchvision(name.split(":", 1)[1])(
            num_classes, pretrained, image_size, weights=weights, **kwargs
        )
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}: use one of {sorted(MODELS)}, 'timm:<name>', 'tv:<name>', "
            "or a _target_ node"
        )
    try:
        return MODELS[name](num_classes, pretrained, image_size, weights=weights, **kwargs)
    except (OSError, RuntimeError) as e:
        if pretrained:
            raise ModelError(
                f"could not fetch pretrained weights for {name!r} ({e}). Pretrained names need a "
                "network or a filled torch hub cache; offline, load a checkpoint instead."
            ) from None
        raise


def build_model(spec, num_classes: int, image_size: int, role: str) -> nn.Module:
    """Build the model a ``student``/``teacher`` config node describes.

    A node with ``model._target_`` is instantiated as written (bring your own architecture:
    give it its class count yourself); otherwise ``name``, ``pretrained`` and ``kwargs`` go
    to `create_model`.
    """
    target = spec.get("model")
    if target is not None and target.get("_target_"):
        from hydra.utils import instantiate

        try:
            model = instantiate(target)
        except Exception as e:
            raise ConfigError(f"{role}.model: cannot instantiate {target._target_}: {e}") from e
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{role}.model._target_={target._target_} did not build an nn.Module")
        return model
    kwargs = dict(spec.get("kwargs") or {})
    return create_model(
        str(spec.name),
        num_classes,
        pretrained=bool(spec.get("pretrained", False)),
        image_size=image_size,
        weights=spec.get("weights"),
        **kwargs,
    )


def _fit_head(model: nn.Module, num_classes: int, arch: str) -> nn.Module:
    """Replace the last 1000-way linear layer of a pretrained model by a fresh one."""
    if num_classes == 1000:
        return model
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and mod.out_features == 1000:
            last = name
    if last is None:
        raise ModelError(f"{arch}: found no 1000-way linear head to replace")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr)
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


class SelectOutputs(nn.Module):
    """Keep some of a model's outputs, in a given order.

    An ImageNet-1K teacher distilling ImageWoof keeps the 10 logits of the ImageWoof classes
    (by their ImageNet indices), so label ``i`` of the data is column ``i`` of the teacher.
    """

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.indices)


@torch.no_grad()
def count_outputs(model: nn.Module, image_size: int) -> int:
    """Outputs of ``model`` on one input of the given size (works for any architecture)."""
    was_training = model.training
    model.eval()
    try:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else "cpu"
        out = model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return int(out.shape[-1])


# ----------------------------------------------------------------------------- checkpoints

# Where the weights sit inside the checkpoint formats people hand us.
_STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# Key prefixes added by wrappers: Lightning attribute names, DataParallel/DDP, torch.compile.
_PREFIXES = ("model.", "module.", "student.", "teacher.", "_orig_mod.", "net.", "backbone.")


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the weights and any metadata from a checkpoint file.

    Accepts a plain state dict, a Lightning checkpoint (``state_dict``), the torchvision
    reference scripts' and RDED's ``{"model": ...}``, ``.safetensors``, and the ``teacher.pt``
    that ``mode=teacher`` writes (weights plus class list, architecture and input settings).

    Returns:
        The state dict (prefixes not yet stripped) and the metadata (empty if none).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path)), {}
        except Exception as e:
            raise ModelError(f"checkpoint {path} is not a readable safetensors file: {e}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints may pickle hyper-parameters (OmegaConf nodes): the user's own
        # file, so a full unpickle is acceptable; it still fails loudly if broken.
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:
            raise ModelError(f"checkpoint {path} cannot be read by torch.load: {e}") from None
    if isinstance(obj, nn.Module):
        return obj.state_dict(), {}
    if not isinstance(obj, Mapping):
        raise ModelError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    meta = dict(obj.get("meta") or {}) if isinstance(obj.get("meta"), Mapping) else {}
    for key in _STATE_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return inner.state_dict(), meta
        if isinstance(inner, Mapping) and inner and _is_state_dict(inner):
            return dict(inner), meta
    if _is_state_dict(obj):
        return dict(obj), meta
    raise ModelError(
        f"checkpoint {path} has no weights under any of {list(_STATE_KEYS)} "
        f"(top-level keys: {list(obj)[:8]})"
    )


def _is_state_dict(d: Mapping) -> bool:
    return all(isinstance(k, str) for k in d) and any(torch.is_tensor(v) for v in d.values())


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes so the keys match ``expected`` as well as possible."""
    best, best_hits = state, len(expected & state.keys())
    frontier = [state]
    for _ in range(3):  # nested wrappers: "model.module.", "module._orig_mod." ...
        nxt = []
        for cand in frontier:
            for p in _PREFIXES:
                sub = {k[len(p) :]: v for k, v in cand.items() if k.startswith(p)}
                if not sub:
                    continue
                hits = len(expected & sub.keys())
                if hits > best_hits:
                    best, best_hits = sub, hits
                nxt.append(sub)
        frontier = nxt
    return best


def load_weights(
    model: nn.Module, path: str | Path, role: str, arch: str, num_classes: int | None = None
) -> dict[str, Any]:
    """Read ``path`` and load it into ``model`` strictly (see `fit_state`).

    Returns:
        The checkpoint's metadata (empty for files that carry none).
    """
    state, meta = read_checkpoint(path)
    fit_state(model, state, path, role, arch, num_classes)
    return meta


def fit_state(
    model: nn.Module,
    state: dict[str, torch.Tensor],
    path: str | Path,
    role: str,
    arch: str,
    num_classes: int | None = None,
) -> None:
    """Load a state dict into ``model`` strictly, after stripping wrapper prefixes; explain
    every mismatch, naming the checkpoint and the model.

    With ``num_classes``, a checkpoint whose head has another number of outputs is named as
    such (the most common mistake: a 1000-class ImageNet checkpoint for a 10-class subset).
    """
    expected = model.state_dict()
    state = _strip_prefix(state, set(expected))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs {role} {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        heads = [
            (k, tuple(state[k].shape)[0])
            for k, v in expected.items()
            if k in state
            and v.ndim >= 1
            and v.shape[0] == num_classes
            and tuple(state[k].shape) != tuple(v.shape)
        ]
        if num_classes is not None and heads:
            k, n = heads[-1]
            parts.append(
                f"the checkpoint's head ({k}) has {n} outputs, {role}={arch} is built for "
                f"{num_classes} classes"
            )
        if shapes:
            parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:4])}")
        if missing:
            parts.append(f"missing from the checkpoint ({len(missing)}): {missing[:5]}")
        if unexpected:
            parts.append(f"not in {arch} ({len(unexpected)}): {unexpected[:5]}")
        raise ModelError(
            f"checkpoint {path} does not fit {role}={arch}: " + " | ".join(parts) + ". Is it "
            f"a checkpoint of {arch} trained on the same classes (and the same kwargs)?"
        )
    model.load_state_dict(state, strict=True)
