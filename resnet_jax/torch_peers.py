"""The PyTorch peer of a registered model, for side-by-side timing (`benchmark --vs-torch`).

torchvision or timm builds the twin where one exists (the ImageNet ResNets, VGG, AlexNet, ...,
as `resnet_jax.convert` imports them). The CIFAR ResNets and their plain twins have none, so
`CifarResNet` below writes them in torch with our module names, so that `convert.from_torch`
loads its weights unchanged and a test can prove both compute the same function.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from resnet_jax.models import model_spec

# Registered name -> (library, constructor name) of the twin; the CIFAR nets are built here.
_TORCHVISION = ('alexnet', 'googlenet', 'inception_v3', 'squeezenet1_0', 'squeezenet1_1',
                *(f'resnet{d}' for d in (18, 34, 50, 101, 152)),
                *(f'vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')))
_TIMM = {**{f'preact_resnet{d}': f'resnetv2_{d}' for d in (50, 101, 152)},
         'xception': 'legacy_xception', 'mobilenet_v1': 'mobilenetv1_100',
         'inception_v4': 'inception_v4', 'inception_resnet_v2': 'inception_resnet_v2'}


class _CifarBasicBlock(nn.Module):
  """He et al. 2015, Sec. 4.2: two 3x3 conv-BN, option-A (zero-padding) shortcut, ReLU after."""

  def __init__(self, cin: int, cout: int, stride: int, residual: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.extra, self.residual = stride, cout - cin, residual

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if not self.residual:
      return torch.relu(y)
    s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.extra:
      s = nn.functional.pad(s, (0, 0, 0, 0, 0, self.extra))
    return torch.relu(y + s)


class CifarResNet(nn.Module):
  """`cifar_resnetN` / `plainN` in torch: 3x3 stem, 3 stages of n units (16/32/64), pool, fc."""

  def __init__(self, stage_sizes, widths=(16, 32, 64), num_classes: int = 10,
               residual: bool = True):
    super().__init__()
    self.stem_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.stem_bn = nn.BatchNorm2d(widths[0])
    self.units = []
    cin = widths[0]
    for i, (n, width) in enumerate(zip(stage_sizes, widths)):
      for j in range(n):
        name = f'stage{i}_block{j}'
        setattr(self, name, _CifarBasicBlock(cin, width, 2 if i and not j else 1, residual))
        self.units.append(name)
        cin = width
    self.head = nn.Linear(cin, num_classes)
    for m in self.modules():  # Kaiming fan-out, as ours (He et al. 2015b).
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = torch.relu(self.stem_bn(self.stem_conv(x)))
    for name in self.units:
      x = getattr(self, name)(x)
    return self.head(x.mean((2, 3)))


def has_peer(name: str) -> bool:
  return name in _TORCHVISION or name in _TIMM or _cifar_kwargs(name) is not None


def _cifar_kwargs(name: str) -> dict | None:
  if not re.fullmatch(r'(cifar_resnet|plain)\d+', name):
    return None
  kwargs = model_spec(name)['kwargs']
  return dict(stage_sizes=kwargs['stage_sizes'], widths=kwargs['widths'],
              residual=kwargs.get('residual', True))


def torch_peer(name: str, num_classes: int) -> nn.Module:
  """A randomly initialised torch twin of the registered model `name` (never a download)."""
  cifar = _cifar_kwargs(name)
  if cifar is not None:
    return CifarResNet(num_classes=num_classes, **cifar)
  if name in _TORCHVISION:
    import torchvision
    kwargs = {'aux_logits': False, 'init_weights': False} if name in (
        'googlenet', 'inception_v3') else {}
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kwargs)
  if name in _TIMM:
    import timm
    return timm.create_model(_TIMM[name], pretrained=False, num_classes=num_classes)
  raise ValueError(f'{name} has no torchvision/timm twin; models with one: '
                   f'{", ".join(sorted([*_TORCHVISION, *_TIMM]))}, cifar_resnetN, plainN')
