"""The params' schema: one frozen dataclass per params.yaml section, each field with its
validation rules (config/parse.py applies them). `params.yaml` is the single source of every
value; the rules and choices live here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from vitlens.errors import VitlensError


class ConfigError(VitlensError):
    pass


def spec(**rules: Any) -> Any:
    """A required field with validation rules: gt, ge, le, lt, choices."""
    return field(metadata=rules)


SOURCES = ("cifar10", "cifar100", "folder")  # the official archives, or the user's own pictures


@dataclass(frozen=True)
class DataConfig:
    source: str = spec(choices=SOURCES)
    url: str = spec()  # "" = the source's official archive
    md5: str = spec()  # "" = the official archive's
    labels: str = spec(choices=("fine", "coarse"))  # cifar100's 100 classes or 20 superclasses
    path: str = spec()  # folder: a directory in the ImageFolder layout
    test_size: float = spec(gt=0, lt=1)  # folder without train/ and test/: held out per class
    skip_bad: bool = spec()  # folder: skip (and count) unreadable images instead of stopping
    retries: int = spec(ge=0, le=10)
    timeout_s: float = spec(gt=0)
    val_size: int = spec(ge=1)
    val_seed: int = spec(ge=0)
    train_subset: int = spec(ge=0)


POS_EMBEDS = ("learned", "sincos")  # learned positions, or fixed 2-D sin-cos ones
STEMS = ("patch", "conv")  # one linear map per patch (ViT), or small strided convs
POOLS = ("cls", "mean")  # the head reads the CLS token, or the mean of the patch tokens


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = spec(ge=1)
    patch_size: int = spec(ge=1)
    dim: int = spec(ge=1)
    depth: int = spec(ge=1)
    heads: int = spec(ge=1)
    mlp_ratio: float = spec(gt=0)
    dropout: float = spec(ge=0, lt=1)
    attn_dropout: float = spec(ge=0, lt=1)
    drop_path: float = spec(ge=0, lt=1)
    token_drop: float = spec(ge=0, lt=1)
    pos_embed: str = spec(choices=POS_EMBEDS)
    stem: str = spec(choices=STEMS)
    pool: str = spec(choices=POOLS)
    lsa: bool = spec()  # locality self-attention: no self-attention, a learned scale
    registers: int = spec(ge=0)  # extra learned tokens attention may rest on (Darcet et al. 2023)


# torch.compile's modes: reduce-overhead adds CUDA graphs; max-autotune* search kernels (minutes)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZERS = ("adamw", "muon")  # muon: Muon for the blocks' weight matrices, AdamW for the rest
PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on CUDA and native-bf16 CPUs (device.use_bf16)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = spec(ge=1)
    batch_size: int = spec(ge=1)
    lr: float = spec(gt=0)
    min_lr: float = spec(ge=0)
    weight_decay: float = spec(ge=0)
    warmup_epochs: float = spec(ge=0)
    label_smoothing: float = spec(ge=0, lt=1)
    label_smoothing_decay: bool = spec()  # linearly from label_smoothing to 0 over the run
    token_drop_decay: bool = spec()  # model.token_drop in the first epoch, linearly to 0 in the last
    ema: float = spec(ge=0, lt=1)  # per-step decay of the weights' moving average; 0 = off
    grad_clip: float = spec(ge=0)
    optimizer: str = spec(choices=OPTIMIZERS)
    crop_padding: int = spec(ge=0)
    crop_fill: str = spec(choices=("zero", "reflect"))  # what the crop's padding shows
    flip: bool = spec()
    cutout: int = spec(ge=0)  # side of a square blanked in each training image; 0 = off
    trivial_augment: bool = spec()  # one random op per image, on the device (data/trivial.py)
    mixup: float = spec(ge=0)  # MixUp's Beta alpha; 0 = off
    cutmix: float = spec(ge=0)  # CutMix's Beta alpha; 0 = off (both on: one per batch)
    repeat_aug: int = spec(ge=1)  # copies of each image in its batch, augmented apart; 1 = off
    seed: int = spec(ge=0)
    device: str = spec(choices=("auto", "cpu", "cuda", "mps"))
    precision: str = spec(choices=PRECISIONS)
    compile: bool = spec()
    compile_mode: str = spec(choices=COMPILE_MODES)
    threads: int = spec(ge=0)
    nproc: int = spec(ge=1)
    snapshot_images: int = spec(ge=0, le=64)


@dataclass(frozen=True)
class EvaluateConfig:
    batch_size: int = spec(ge=1)
    flip_tta: bool = spec()  # also report test metrics of logits averaged with the mirrored image


@dataclass(frozen=True)
class VisualizeConfig:
    num_images: int = spec(ge=1, le=64)
    seed: int = spec(ge=0)
    indices: list[int] = spec()
    distance_images: int = spec(ge=1)


FAITHFULNESS_METHODS = ("rollout", "grad_rollout", "last_layer", "random")


@dataclass(frozen=True)
class FaithfulnessConfig:
    images: int = spec(ge=1)
    steps: int = spec(ge=1)
    methods: list[str] = spec(choices=FAITHFULNESS_METHODS)
    seed: int = spec(ge=0)
    batch_size: int = spec(ge=1)
    blur_kernel: int = spec(ge=1)
    blur_sigma: float = spec(gt=0)
    bootstrap: int = spec(ge=1)
    confidence: float = spec(gt=0, lt=1)
    show_images: int = spec(ge=1, le=16)
    position_top: int = spec(ge=0)  # excess positions recorded per map
    position_warn: float = spec(ge=0, le=1)  # position bias that flags a drawn map


@dataclass(frozen=True)
class ReportConfig:
    images: int = spec(ge=1, le=1000)
    seed: int = spec(ge=0)
    layers: list[int] = spec()
    heads: list[int] = spec()
    class_images: int = spec(ge=1)
    batch_size: int = spec(ge=1)


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = spec()
    experiment: str = spec()
    log_model: bool = spec()
    registered_model: str = spec()


@dataclass(frozen=True)
class Params:
    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    visualize: VisualizeConfig
    faithfulness: FaithfulnessConfig
    report: ReportConfig
    tracking: TrackingConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """`{"model.dim": 192, ...}`, the form MLflow params and `dvc exp run -S` use."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def digest(self, *sections: str, exclude: Collection[str] = ()) -> str:
        """A stable hash of the given sections less the `exclude` keys ("section.key")."""
        d = {s: {k: v for k, v in dataclasses.asdict(getattr(self, s)).items()
                 if f"{s}.{k}" not in exclude} for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

