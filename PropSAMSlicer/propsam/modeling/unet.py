"""Configurable 2D UNet parts (nnU-Net style): encoder stages and a deep-supervised decoder."""

from __future__ import annotations

import torch
from torch import nn


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
            nn.InstanceNorm2d(cout, affine=True),
            nn.LeakyReLU(0.01, inplace=True),
        )


class EncoderStage(nn.Sequential):
    """Two 3x3 conv-norm-act; the first one downsamples by 2 except in stage 0."""

    def __init__(self, cin: int, cout: int, downsample: bool):
        super().__init__(ConvNormAct(cin, cout, 2 if downsample else 1), ConvNormAct(cout, cout))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, channels: list[int]):
        super().__init__()
        cins = [in_channels] + channels[:-1]
        self.stages = nn.ModuleList(
            EncoderStage(cin, cout, downsample=i > 0) for i, (cin, cout) in enumerate(zip(cins, channels))
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class DecoderStage(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.convs = nn.Sequential(ConvNormAct(2 * cout, cout), ConvNormAct(cout, cout))
        self.head = nn.Conv2d(cout, 1, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.convs(torch.cat([self.up(x), skip], dim=1))
        return x, self.head(x)


class Decoder(nn.Module):
    """UNet decoder; returns the last features and logits per stage, full resolution first."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            DecoderStage(channels[i + 1], channels[i]) for i in reversed(range(len(channels) - 1))
        )

    def forward(self, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = skips[-1]
        logits = []
        for stage, skip in zip(self.stages, reversed(skips[:-1])):
            x, logit = stage(x, skip)
            logits.append(logit)
        return x, logits[::-1]
