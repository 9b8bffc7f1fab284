"""Networks. Build either from a NetworkConfig with build_network."""

from ..config import NetworkConfig
from .box2mask import Box2Mask
from .propmask import PropMask


def build_network(config: NetworkConfig):
    return {"box2mask": Box2Mask, "propmask": PropMask}[config.network](config)


__all__ = ["Box2Mask", "PropMask", "build_network"]
