"""OpenAI's ModifiedResNet image tower.

Differences from a torchvision ResNet, all from the CLIP paper: a 3-conv stem with an average pool
instead of a max pool; anti-aliased strided convolutions (an avg-pool precedes every stride-2 conv,
in the main path and the shortcut); and QKV attention pooling over the final feature map instead of
global average pooling.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import ConfigError, VisionConfig
from .layers import Attention
from .towers import Group, ImageTower, register_image_tower


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            # Named "-1", "0", "1" so that OpenAI/open_clip state dicts map key-for-key.
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride)),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, stride=1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        return self.act3(out + identity)


class AttentionPool2d(nn.Module):
    """Attention pooling: the mean token (plus positions) queries the whole feature map."""

    def __init__(self, spatial: int, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(spatial ** 2 + 1, dim) / dim ** 0.5)
        self.attn = Attention(dim, heads, out_dim=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)                                   # [B, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        # Only the pooled token's output is used, so only it needs to be a query.
        return self.attn(x[:, :1], kv=x)[:, 0]


@register_image_tower("modified_resnet")
class ModifiedResNet(ImageTower):
    # quick_gelu: the tower has no GELU (ReLU convolutions, attention pooling); load_weights: nothing to load.
    def __init__(self, cfg: VisionConfig, embed_dim: int, quick_gelu: bool = False, load_weights: bool = True):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.conv1 = nn.Conv2d(3, w // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w // 2)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(w // 2, w // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(w // 2)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(w // 2, w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(w)
        self.act3 = nn.ReLU(inplace=True)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = w
        self.layer1 = self._make_layer(w, cfg.layers[0])
        self.layer2 = self._make_layer(w * 2, cfg.layers[1], stride=2)
        self.layer3 = self._make_layer(w * 4, cfg.layers[2], stride=2)
        self.layer4 = self._make_layer(w * 8, cfg.layers[3], stride=2)
        if cfg.image_size % 32:
            raise ValueError(f"ModifiedResNet needs image_size divisible by 32, got {cfg.image_size}")
        self.attnpool = AttentionPool2d(cfg.image_size // 32, w * 32, cfg.heads, embed_dim)
        self.init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        layers = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def init_weights(self) -> None:
        attn = self.attnpool.attn
        std = attn.out_proj.in_features ** -0.5
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            nn.init.normal_(lin.weight, std=std)
        # Zero-init the last BN of each residual branch so every block starts as the identity.
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                nn.init.zeros_(block.bn3.weight)

    @classmethod
    def check_config(cls, cfg: VisionConfig) -> None:
        if not isinstance(cfg.layers, tuple) or len(cfg.layers) != 4 or \
                any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in cfg.layers):
            raise ConfigError(f"vision.layers: a ModifiedResNet needs 4 stage depths (integers >= 1), got {cfg.layers!r}")
        if cfg.image_size % 32:
            raise ConfigError(f"vision.image_size: {cfg.image_size} is not a multiple of 32 (a ModifiedResNet "
                              "downsamples 32x)")
        if cfg.width % 2:
            raise ConfigError(f"vision.width: {cfg.width} is odd (a ModifiedResNet's stem is width // 2 wide)")

    @classmethod
    def feature_width(cls, cfg: VisionConfig) -> int:
        return cfg.width * 32   # the last stage's channels (4 stages doubling from width, 4x bottleneck expansion)

    @property
    def output_dim(self) -> int:
        return self.attnpool.attn.out_proj.out_features

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.avgpool(x)

    def forward_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        # channels_last (NHWC) activations: oneDNN on CPU and cuDNN's tensor-core kernels both run NHWC
        # convolutions natively, so this skips a layout conversion around every convolution (about 20%
        # faster on CPU). The weights keep the default layout, so state dicts and saved files are unchanged.
        x = x.to(self.conv1.weight.dtype).contiguous(memory_format=torch.channels_last)
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally averaged final feature map, [B, width*32]: the pre-projection feature for probes.

        The attention pool is itself the projection (its output projection maps to ``embed_dim``), so
        the natural "before projection" feature of a ResNet tower is the pooled map it attends over.
        """
        return self.forward_feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The attention pool reads the whole feature map, not the averaged forward_features: the projection
        # is the pooling itself, so this tower has no separate forward_head.
        return self.attnpool(self.forward_feature_map(x))

    def groups(self) -> list[Group]:
        """attnpool, layer4, layer3, layer2, layer1, [the stem]."""
        return [self.attnpool, self.layer4, self.layer3, self.layer2, self.layer1,
                [self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3]]
