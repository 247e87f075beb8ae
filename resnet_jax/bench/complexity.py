"""Complexity of the registered models: forward FLOPs from XLA's cost analysis, and the rows of
the zoo table (`--zoo`: input, classes, parameters, GFLOPs, torch twin, paper)."""
from __future__ import annotations

import re

import jax

from resnet_jax import models
from resnet_jax.models import count_params, create_model, model_spec


def forward_flops(name: str, batch: int = 1) -> float:
  """FLOPs of the compiled eval-mode forward pass of a registered model at its paper's input,
  from XLA's cost analysis (`resnet_jax.models.forward_flops`; no weights made).

  Nets of hundreds of residual units (`deep_net`) take XLA:CPU many minutes to compile unrolled
  (and a scan's cost counts one unit): for them this is XLA's analysis of the lowered program,
  before optimization (on cifar_resnet110 that reads 5% below the compiled count).
  """
  spec = model_spec(name)
  model = create_model(name, num_classes=spec['num_classes'])
  shape = (spec['input_size'], spec['input_size'], spec['in_channels'])
  flops = models.forward_flops(model, shape, batch=batch, compiled=not deep_net(name))
  if flops is None:
    raise RuntimeError(f'XLA reports no FLOPs for {name} on {jax.default_backend()}')
  return flops


def deep_net(name: str) -> bool:
  return sum(model_spec(name)['kwargs'].get('stage_sizes', ())) > 150


# The paper of each family, by a pattern searched in the name (first match wins).
PAPERS = [
    (r'^lenet', 'LeCun et al. 1998'), (r'cifar_resnet', 'He et al. 2015, Sec. 4.2'),
    (r'plain', 'He et al. 2015, Sec. 4 (plain)'), (r'preact', 'He et al. 2016'),
    (r'^resnet', 'He et al. 2015'), (r'alexnet', 'Krizhevsky et al. 2012'),
    (r'vgg', 'Simonyan & Zisserman 2015'), (r'nin$', 'Lin et al. 2014'),
    (r'googlenet', 'Szegedy et al. 2015'), (r'inception_v3', 'Szegedy et al. 2016'),
    (r'^bn_inception', 'Ioffe & Szegedy 2015'),
    (r'inception_(v4|resnet)', 'Szegedy et al. 2017'), (r'xception', 'Chollet 2017'),
    (r'mobilenet_v2', 'Sandler et al. 2018'), (r'mobilenet', 'Howard et al. 2017'),
    (r'squeezenet', 'Iandola et al. 2016'),
    (r'^enet', 'Paszke et al. 2016'),
    (r'^fractalnet', 'Larsson et al. 2016'),
    (r'^overfeat', 'Sermanet et al. 2013'),
    (r'^fmp', 'Graham 2014'), (r'^mlp', 'Glorot & Bengio 2010; Klambauer et al. 2017'),
    (r'^ciresan_mlp', 'Ciresan et al. 2010'),
]


def paper(name: str) -> str:
  return next((cite for pattern, cite in PAPERS if re.search(pattern, name)), '')


def zoo_rows(names: list[str]) -> list[dict]:
  """One row per model; 'twin' is the registered torch twin ('torchvision resnet18'), or ''."""
  rows = []
  for name in names:
    spec = model_spec(name)
    rows.append({'model': name, 'input': f"{spec['input_size']}x{spec['input_size']}x"
                                         f"{spec['in_channels']}",
                 'classes': spec['num_classes'], 'params': count_params(name),
                 'gflops': forward_flops(name) / 1e9, 'twin': spec['torch_twin'] or '',
                 'paper': paper(name)})
  return rows


def natural_key(name: str):
  """Sorts model names by their numbers' values: resnet18 before resnet101."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
