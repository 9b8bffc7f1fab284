"""Network configurations as data: a named JSON file per model size (paper, lite)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import InputError

CONFIG_DIR = Path(__file__).with_name("configs")


@dataclass(frozen=True)
class NetworkConfig:
    """One UNet-style network (Box2Mask or PropMask).

    Stage i has min(base_channels * 2**i, max_channels) channels; stage 0 keeps resolution and
    each later stage halves it. PropMask cross-attends at the `attention_stages` lowest stages.
    """

    network: str  # "box2mask" or "propmask"
    image_size: int
    base_channels: int
    max_channels: int
    stages: int = 6
    in_channels: int = 1  # PropMask: 2r + 1 reads each slice with r neighbours on each side (engine/slice_context.py)
    attention_stages: int = 4
    attention_head_dim: int = 32
    positional_encoding: bool = False  # added to Q and K; no parameters
    presence_head: bool = False  # per adjacent slice: is the object there at all
    boundary_head: bool = False  # BD (SAM2-3dMed): boundary logits fused into the mask
    position_head: bool = False  # SRPP (SAM2-3dMed): signed slice offset from the guide
    prompt_memory: bool = False  # PropMask also attends to the user's prompt slice (image + mask)
    memory_slices: int = 1  # with prompt_memory: the prompt plus the side's (memory_slices - 1) previous guides
    # PropMask: every image also reads the nearest known mask at full resolution as one more input
    # channel (an adjacent slice its guide's mask, the guide and memory slices their own), so the
    # decoder need not rebuild the guide's outline from the low-resolution attention alone
    mask_hint: bool = False
    mask_candidates: int = 1  # Box2Mask: > 1 adds that many - 1 alternative masks and a quality score for each
    # explicit widths per stage instead of base_channels * 2**i capped at max_channels (a network
    # widened from another one where it is cheap: the deep, low-resolution stages; training/widen.py)
    stage_channels: tuple | None = None
    # PropMask: width of each attention stage's sinusoidal code, the rest of its channels getting
    # none (default: the stage's width). A widened network keeps its source's codes, so it starts
    # as its source did
    positional_channels: tuple | None = None

    def __post_init__(self):  # widths from JSON arrive as lists: kept as tuples, so a config stays hashable
        for name in ("stage_channels", "positional_channels"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def channels(self) -> list[int]:
        if self.stage_channels is not None:
            return list(self.stage_channels)
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.stages)]

    @property
    def attention_channels(self) -> list[int]:
        """PropMask: the widths of the attention stages (the lowest `attention_stages`)."""
        return self.channels[self.stages - self.attention_stages :]

    def validate(self) -> "NetworkConfig":
        if self.network not in ("box2mask", "propmask"):
            raise InputError(f"unknown network kind {self.network!r}")
        if self.image_size % 2 ** (self.stages - 1):
            raise InputError(f"image_size {self.image_size} must be divisible by 2**{self.stages - 1}")
        if self.network == "propmask" and not 1 <= self.attention_stages <= self.stages:
            raise InputError(f"attention_stages must be within 1..{self.stages}")
        if self.network == "box2mask" and self.mask_hint:
            raise InputError("mask_hint is a PropMask setting (Box2Mask has no guiding mask)")
        if self.network == "box2mask" and self.in_channels != 1:
            raise InputError(f"Box2Mask reads one slice: in_channels must be 1, got {self.in_channels}")
        if self.in_channels < 1 or self.in_channels % 2 == 0:
            raise InputError(f"in_channels must be odd (the slice and as many neighbours on each side), got {self.in_channels}")
        if self.mask_candidates < 1:
            raise InputError(f"mask_candidates must be at least 1, got {self.mask_candidates}")
        if self.memory_slices < 1:
            raise InputError(f"memory_slices must be at least 1 (the prompt slice), got {self.memory_slices}")
        if self.stage_channels is not None and (len(self.stage_channels) != self.stages
                                                or any(not isinstance(c, int) or c < 1 for c in self.stage_channels)):
            raise InputError(f"stage_channels must be {self.stages} positive widths, one per stage, got {self.stage_channels}")
        if self.positional_channels is not None:
            widths = self.attention_channels
            if len(self.positional_channels) != len(widths) or any(
                    not isinstance(p, int) or not 1 <= p <= w for p, w in zip(self.positional_channels, widths)):
                raise InputError(f"positional_channels must give one width per attention stage, each within 1 and the "
                                 f"stage's width {widths}, got {self.positional_channels}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown network configuration keys: {sorted(unknown)}")
        return cls(**data).validate()


@dataclass(frozen=True)
class ModelConfig:
    """A Box2Mask + PropMask pair that the engine runs together."""

    name: str
    box2mask: NetworkConfig
    propmask: NetworkConfig

    def to_dict(self) -> dict:
        return {"name": self.name, "box2mask": self.box2mask.to_dict(), "propmask": self.propmask.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        try:
            return cls(
                name=data["name"],
                box2mask=NetworkConfig.from_dict(data["box2mask"]),
                propmask=NetworkConfig.from_dict(data["propmask"]),
            )
        except (KeyError, TypeError) as exc:
            raise InputError(f"model configuration is incomplete: {exc}") from None


def named_config(name: str) -> ModelConfig:
    path = CONFIG_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
        raise InputError(f"no model configuration named {name!r}; known: {', '.join(known)}")
    return ModelConfig.from_dict(json.loads(path.read_text()))
