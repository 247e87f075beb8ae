"""Model complexity as a table: parameters and forward FLOPs from XLA's cost analysis.

  python -m resnet_jax.benchmark --zoo [--models resnet50,vgg16] [--markdown]

FLOPs are those XLA's cost analysis counts for the compiled forward pass at batch 1 in eval
mode (a multiply-add counts 2), at the model's registered input size, on the current backend.
"""
from __future__ import annotations

import argparse
import functools
import re

import jax
import jax.numpy as jnp

from resnet_jax.models import count_params, create_model, list_models, model_spec

# The torchvision/timm model each of ours imports weights from (resnet_jax.convert).
TWINS = {
    **{f'resnet{d}': f'torchvision {f"resnet{d}"}' for d in (18, 34, 50, 101, 152)},
    **{f'preact_resnet{d}': f'timm resnetv2_{d}' for d in (50, 101, 152)},
    'alexnet': 'torchvision alexnet', 'googlenet': 'torchvision googlenet',
    'inception_v3': 'torchvision inception_v3', 'inception_v4': 'timm inception_v4',
    'inception_resnet_v2': 'timm inception_resnet_v2', 'xception': 'timm legacy_xception',
    'mobilenet_v1': 'timm mobilenetv1_100', 'squeezenet1_0': 'torchvision squeezenet1_0',
    'squeezenet1_1': 'torchvision squeezenet1_1',
    **{f'vgg{d}{bn}': f'torchvision vgg{d}{bn}' for d in (11, 13, 16, 19) for bn in ('', '_bn')},
}


def forward_flops(name: str, batch: int = 1) -> float:
  """FLOPs of the compiled eval-mode forward pass, from XLA's cost analysis (no weights made).

  Nets of hundreds of residual units (`deep_net`) take XLA:CPU many minutes to compile unrolled
  (and a scan's cost counts one unit): for them this is XLA's analysis of the lowered program,
  before optimization (on cifar_resnet110 that reads 5% below the compiled count).
  """
  spec = model_spec(name)
  model = create_model(name, num_classes=spec['num_classes'])
  x = jax.ShapeDtypeStruct((batch, spec['input_size'], spec['input_size'], spec['in_channels']),
                           jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  lowered = jax.jit(functools.partial(model.apply, train=False)).lower(variables, x)
  cost = lowered.cost_analysis() if deep_net(name) else lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one per program.
  return float(cost['flops'])


def deep_net(name: str) -> bool:
  return sum(model_spec(name)['kwargs'].get('stage_sizes', ())) > 150


# The paper of each family, by a pattern searched in the name (first match wins).
PAPERS = [
    (r'lenet', 'LeCun et al. 1998'), (r'cifar_resnet', 'He et al. 2015, Sec. 4.2'),
    (r'plain', 'He et al. 2015, Sec. 4 (plain)'), (r'preact', 'He et al. 2016'),
    (r'^resnet', 'He et al. 2015'), (r'alexnet', 'Krizhevsky et al. 2012'),
    (r'vgg', 'Simonyan & Zisserman 2015'), (r'nin$', 'Lin et al. 2014'),
    (r'googlenet', 'Szegedy et al. 2015'), (r'inception_v3', 'Szegedy et al. 2016'),
    (r'inception_(v4|resnet)', 'Szegedy et al. 2017'), (r'xception', 'Chollet 2017'),
    (r'mobilenet', 'Howard et al. 2017'), (r'squeezenet', 'Iandola et al. 2016'),
]


def paper(name: str) -> str:
  return next((cite for pattern, cite in PAPERS if re.search(pattern, name)), '')


def zoo_rows(names: list[str]) -> list[dict]:
  rows = []
  for name in names:
    spec = model_spec(name)
    rows.append({'model': name, 'input': f"{spec['input_size']}x{spec['input_size']}x"
                                         f"{spec['in_channels']}",
                 'classes': spec['num_classes'], 'params': count_params(name),
                 'gflops': forward_flops(name) / 1e9, 'twin': TWINS.get(name, ''),
                 'paper': paper(name)})
  return rows


def print_table(rows: list[dict], markdown: bool) -> None:
  columns = ['model', 'input', 'classes', 'params', 'gflops', 'twin', 'paper']
  cells = [[f'{r[c]:,}' if c == 'params' else f'{r[c]:.3f}' if c == 'gflops' else str(r[c])
            for c in columns] for r in rows]
  if markdown:
    print('| ' + ' | '.join(columns) + ' |')
    print('|' + '|'.join('---:' if c in ('params', 'gflops', 'classes') else '---'
                         for c in columns) + '|')
    for row in cells:
      print('| ' + ' | '.join(row) + ' |')
    return
  widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
  print('  '.join(c.ljust(w) for c, w in zip(columns, widths)))
  for row in cells:
    print('  '.join(v.ljust(w) for v, w in zip(row, widths)))


def natural_key(name: str):
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.benchmark', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--zoo', action='store_true', required=True,
                      help='parameters and forward GFLOPs of registered models')
  parser.add_argument('--models', default='', help='comma-separated names (default: all)')
  parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
  args = parser.parse_args(argv)
  names = [n for n in args.models.split(',') if n] or sorted(list_models(), key=natural_key)
  unknown = sorted(set(names) - set(list_models()))
  if unknown:
    parser.error(f'--models: unknown {unknown}; see resnet_jax.models.list_models()')
  print_table(zoo_rows(names), args.markdown)


if __name__ == '__main__':
  main()
