"""The PyTorch peer of a registered model, for side-by-side timing (`benchmark --vs-torch`) and
the weight-import tests.

Which twin a model has is its registration's `torch_twin` ('<library> <constructor>',
`model_spec(name)['torch_twin']`); this module only builds it. torchvision or timm builds the
twin where one exists (the ImageNet ResNets, VGG, AlexNet, ..., as `resnet_jax.convert` imports
them). The CIFAR ResNets and their plain twins have none, so `CifarResNet` below writes them in
torch with our module names, so that `convert.from_torch` loads its weights unchanged and a test
can prove both compute the same function; `CifarVGG` does the same for `cifar_vgg16` from
torchvision's VGG layers. Both initialise as torchvision does (the parity experiment trains them).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resnet_jax.models import list_models, model_spec
from resnet_jax.models.vgg import scaled_blocks

# torchvision constructor arguments that make the twin our registered net: no auxiliary heads
# (ours are off by default) and no truncated-normal init of the whole net (slow, and the weights
# are imported or timed, never trained here).
_TORCHVISION_KWARGS = {'googlenet': {'aux_logits': False, 'init_weights': False},
                       'inception_v3': {'aux_logits': False, 'init_weights': False}}


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


class CifarVGG(nn.Module):
  """`cifar_vgg16` in torch: torchvision's VGG `features` (with BatchNorm; the same indices as
  ours) and one Linear head on the 1x1x512 map, initialised as torchvision's VGG: convolutions
  Kaiming normal fan-out with zero bias, BN scale 1 and offset 0, Linear N(0, 0.01), zero bias."""

  def __init__(self, blocks, num_classes: int = 10, batch_norm: bool = True, width: float = 1.0):
    super().__init__()
    from torchvision.models.vgg import make_layers
    blocks = scaled_blocks(blocks, width)  # VGG's `width` multiplier, rounded as ours
    layout = [c for num_convs, channels in blocks for c in [channels] * num_convs + ['M']]
    self.features = make_layers(layout, batch_norm=batch_norm)
    self.classifier = nn.Linear(blocks[-1][1], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
      elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        nn.init.zeros_(m.bias)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.features(x), 1))


def has_peer(name: str) -> bool:
  return model_spec(name)['torch_twin'] is not None


def torch_peer(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
  """A randomly initialised torch twin of the registered model `name` (never a download).

  `num_classes` defaults to the registered one; `kwargs` go to the twin's constructor (after,
  and over, the ones that make it our registered net).
  """
  spec = model_spec(name)
  if spec['torch_twin'] is None:
    with_twin = [n for n in list_models() if model_spec(n)['torch_twin'] is not None]
    raise ValueError(f'{name} has no torch twin; models with one: {", ".join(with_twin)}')
  library, constructor = spec['torch_twin'].split()
  if num_classes is None:
    num_classes = spec['num_classes']
  if library == 'torchvision':
    import torchvision
    kwargs = {**_TORCHVISION_KWARGS.get(constructor, {}), **kwargs}
    return getattr(torchvision.models, constructor)(weights=None, num_classes=num_classes,
                                                    **kwargs)
  if library == 'timm':
    import timm
    return timm.create_model(constructor, pretrained=False, num_classes=num_classes, **kwargs)
  if library == 'resnet_jax.torch_peers' and constructor == 'CifarResNet':
    ours = spec['kwargs']
    return CifarResNet(ours['stage_sizes'], ours['widths'], num_classes,
                       ours.get('residual', True), **kwargs)
  if library == 'resnet_jax.torch_peers' and constructor == 'CifarVGG':
    ours = spec['kwargs']
    return CifarVGG(ours['blocks'], num_classes, ours.get('batch_norm', False), **kwargs)
  raise ValueError(f'{name}: cannot build its torch twin {spec["torch_twin"]!r}')
