"""Speed, memory and complexity of the models, as tables.

  python -m resnet_jax.benchmark --model cifar_resnet20 [--batch 128] [--image-size 32]
      [--dtype float32|bfloat16] [--mode train|infer] [--vs-torch] [--json]
  python -m resnet_jax.benchmark --model cifar_resnet20 --profile [--steps 3]
  python -m resnet_jax.benchmark --model cifar_resnet20 --convs [--vs-torch]
  python -m resnet_jax.benchmark --all --mode infer --batch 1      (every registered model)
  python -m resnet_jax.benchmark --mode pipeline [--images DIR] [--workers N]
  python -m resnet_jax.benchmark --mode restart --model lenet5,resnet50 [--dtype bfloat16]
  python -m resnet_jax.benchmark --zoo [--models resnet50,vgg16] [--markdown]

(`python -m resnet_jax.bench` is the same command.)

A step row gives the parameters, the FLOPs of the compiled step (XLA's cost analysis; a
multiply-add counts 2), its peak device memory (XLA's memory analysis: arguments + outputs +
temporaries - donated aliases), steps/s and images/s (median of timed rounds after warm-up), and
model-FLOPs utilisation against the matmul peak measured on the same device in the same dtype.
`train` times the project's own `resnet_jax.steps.train_step` (SGD with momentum and weight
decay, BN in training mode, on one device); `infer` the eval-mode forward pass.

`--vs-torch` builds the torchvision/timm twin (or, for the CIFAR ResNets, `torch_peers`), with
the same batch and precision (fp32 against fp32; bfloat16 against torch autocast bf16), channels-
last, and times it in the same rounds, alternating with ours, so both see the same machine state.

`--profile` traces a few of our steps with `jax.profiler` and prints where the step's time goes:
the compiled program's instructions summed by kind (convolutions, transposes, fusions of
elementwise ops...), and the largest single ones with the JAX op each was lowered from.

`--convs` times each distinct convolution of the model on its own (forward, input gradient,
weight gradient; with `--vs-torch` torch's as well, alternating), and what one training step
spends in them: on XLA:CPU the convolutions run on the thread pool outside the trace that
`--profile` reads.

`--mode restart` times the main job from process start to its first training step: a fresh
run, a resume after a SIGTERM without the compilation cache, and one with the cache warm.

`--zoo` prints forward FLOPs at batch 1 and the registered input size for the zoo table of
docs/models.md.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import jax
import jax.numpy as jnp

from resnet_jax.bench.complexity import natural_key, zoo_rows
from resnet_jax.bench.convs import convolution_rows
from resnet_jax.bench.pipeline import pipeline_row
from resnet_jax.bench.profile import profile_row
from resnet_jax.bench.restart import restart_row
from resnet_jax.bench.step import peak_matmul_flops, step_row
from resnet_jax.models import list_models

# (row key, column head, format) of each table.
STEP_COLUMNS = [
    ('model', 'model', str), ('mode', 'mode', str), ('batch', 'batch', str),
    ('image_size', 'size', str), ('dtype', 'dtype', str), ('params', 'params', '{:,}'.format),
    ('flops_per_step', 'GFLOP/step', lambda v: f'{v / 1e9:.3f}'),
    ('peak_bytes', 'peak MiB', lambda v: f'{v / 2**20:.0f}'),
    ('steps_per_sec', 'steps/s', lambda v: f'{v:.2f}'),
    ('images_per_sec', 'img/s', lambda v: f'{v:.0f}'),
    ('mfu', 'MFU %', lambda v: f'{100 * v:.1f}'),
    ('torch_images_per_sec', 'torch img/s', lambda v: f'{v:.0f}'),
    ('vs_torch', 'x torch', lambda v: f'{v:.2f}'),
]
CONV_COLUMNS = [
    ('count', 'count', str), ('input', 'input NHWC', str), ('kernel', 'kernel/stride', str),
    ('channels', 'channels', str), ('gflop', 'GFLOP', lambda v: f'{v:.3f}'),
    *[(f'{k}_ms', f'{k} ms', lambda v: f'{v:.2f}') for k in ('fwd', 'dx', 'dw')],
    *[(f'torch_{k}_ms', f'torch {k}', lambda v: f'{v:.2f}') for k in ('fwd', 'dx', 'dw')],
    ('vs_torch', 'x torch', lambda v: f'{v:.2f}'),
]
PIPELINE_COLUMNS = [
    ('images', 'images', str), ('mean_kb', 'mean KB', lambda v: f'{v:.0f}'),
    ('count', 'count', str), ('image_size', 'crop', str),
    ('images_per_sec_per_core', 'img/s (1 core)', lambda v: f'{v:.0f}'),
    ('workers', 'workers', str),
    ('images_per_sec_workers', 'img/s (workers)', lambda v: f'{v:.0f}'),
]
RESTART_COLUMNS = [
    ('model', 'model', str), ('dtype', 'dtype', str), ('batch', 'batch', str),
    ('image_size', 'size', str), ('fresh_s', 'fresh s', lambda v: f'{v:.1f}'),
    ('fresh_compile_s', 'compile s', lambda v: f'{v:.1f}'),
    ('resume_s', 'resume s', lambda v: f'{v:.1f}'),
    ('warm_s', 'resume warm s', lambda v: f'{v:.1f}'),
    ('warm_load_s', 'load s', lambda v: f'{v:.2f}'),
    ('speedup', 'x sooner', lambda v: f'{v:.1f}'),
]
ZOO_COLUMNS = ['model', 'input', 'classes', 'params', 'gflops', 'twin', 'paper']


def print_rows(rows: list[dict], columns: list[tuple[str, str, Callable]]) -> None:
  """A right-aligned text table; a key a row lacks is an empty cell."""
  cells = [[fmt(r[key]) if key in r else '' for key, _, fmt in columns] for r in rows]
  heads = [head for _, head, _ in columns]
  widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
  print('  '.join(h.rjust(w) for h, w in zip(heads, widths)))
  for row in cells:
    print('  '.join(v.rjust(w) for v, w in zip(row, widths)))


def print_zoo(rows: list[dict], markdown: bool) -> None:
  columns = ZOO_COLUMNS
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


def print_convolutions(rows: list[dict]) -> None:
  """The table, and what one training step spends in them (dx only where autodiff needs it:
  not for a convolution of the input images)."""
  print_rows(rows, CONV_COLUMNS)

  def per_step(prefix):
    return sum(r['count'] * sum(r[f'{prefix}{k}_ms'] for k in ('fwd', 'dx', 'dw')
                                if k != 'dx' or r['input_grad']) for r in rows)
  line = (f"# {rows[0]['model']}, batch {rows[0]['batch']}, {rows[0]['dtype']}: one training "
          f"step's convolutions {per_step(''):.1f} ms")
  if all('torch_fwd_ms' in r for r in rows):
    line += f", torch's {per_step('torch_'):.1f} ms"
  print(line)


def print_profile(row: dict) -> None:
  step = row['step_ms']
  print(f"# {row['model']} {row['mode']}, batch {row['batch']}, {row['image_size']}px, "
        f"{row['dtype']}, {row['device']}: step {step:.1f} ms; the traced XLA instructions "
        f"{row['ops_ms']:.1f} ms of it")
  if row['device'] == 'cpu':
    print('# (XLA:CPU runs a large convolution on its thread pool, outside the trace, where '
          'little more than its launch shows: --convs times each one)')
  shown = {k: v for k, v in row['kinds'].items() if v['ms'] >= 0.1}
  rest = [v for k, v in row['kinds'].items() if k not in shown]
  if rest:
    shown[f'({len(rest)} kinds under 0.1 ms)'] = {'count': sum(v['count'] for v in rest),
                                                 'ms': sum(v['ms'] for v in rest)}
  kind_columns = [('kind', 'instruction kind', str), ('count', 'per step', str),
                  ('ms', 'ms/step', lambda v: f'{v:.1f}'),
                  ('share', '% of step', lambda v: f'{100 * v:.1f}')]
  print_rows([{'kind': k, 'count': v['count'], 'ms': v['ms'], 'share': v['ms'] / step}
              for k, v in shown.items()], kind_columns)
  print('# the largest single instructions')
  print_rows(row['top'], [('op', 'instruction', str), ('ms', 'ms/step', lambda v: f'{v:.1f}'),
                          ('shape', 'result', str),
                          ('source', 'JAX op', lambda v: v[-70:])])


def emit(rows: list[dict], columns, as_json: bool) -> None:
  """One JSON object per line, or the table of `columns`."""
  if as_json:
    for row in rows:
      print(json.dumps(row), flush=True)
  else:
    print_rows(rows, columns)


def argument_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.benchmark', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='', help='comma-separated registered names')
  p.add_argument('--all', action='store_true', help='every registered model')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--image-size', type=int, default=0, help="default: the model's own")
  p.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  p.add_argument('--mode', choices=('train', 'infer', 'pipeline', 'restart'), default='train',
                 help='restart: seconds from process start to the first step, fresh and on '
                      'a resume with and without the compilation cache (bench/restart.py)')
  p.add_argument('--vs-torch', action='store_true',
                 help='time the torchvision/timm twin alternating with ours')
  p.add_argument('--torch-compile', action='store_true', help='torch.compile the twin')
  p.add_argument('--steps', type=int, default=10, help='steps per timed round')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--json', action='store_true', help='one JSON object per line instead')
  p.add_argument('--profile', action='store_true',
                 help='where our step spends its time, per XLA instruction kind (traced)')
  p.add_argument('--convs', action='store_true',
                 help="each distinct convolution of the model alone: forward, input and "
                      "weight gradient (with --vs-torch, torch's too)")
  p.add_argument('--images', default='', help='pipeline: a folder of JPEGs to read')
  p.add_argument('--count', type=int, default=256, help='pipeline: images to time')
  p.add_argument('--workers', type=int, default=0, help='pipeline: Grain worker processes')
  p.add_argument('--zoo', action='store_true',
                 help='parameters and forward GFLOPs of registered models')
  p.add_argument('--models', default='', help='--zoo: comma-separated names (default: all)')
  p.add_argument('--markdown', action='store_true', help='--zoo: print a Markdown table')
  return p


def main(argv=None) -> None:
  """The command line; the caller sets XLA's CPU defaults first (resnet_jax.xla_flags)."""
  parser = argument_parser()
  args = parser.parse_args(argv)
  if args.mode == 'pipeline':
    row = pipeline_row(args.images, args.count, args.image_size or 224, args.workers)
    return emit([row], PIPELINE_COLUMNS, args.json)
  names = [n for n in (args.models if args.zoo else args.model).split(',') if n]
  if args.all or (args.zoo and not names):
    names = sorted(list_models(), key=natural_key)
  if not names:
    parser.error('name a model (--model resnet50), or pass --all, --zoo or --mode pipeline')
  unknown = sorted(set(names) - set(list_models()))
  if unknown:
    parser.error(f'unknown model {unknown}; see resnet_jax.models.list_models()')
  if args.zoo:
    return print_zoo(zoo_rows(names), args.markdown)
  if args.mode == 'restart':
    rows = [restart_row(name, dtype=args.dtype, batch=args.batch, image_size=args.image_size)
            for name in names]
    if not args.json:
      print(f'# {jax.devices()[0].device_kind}: seconds from process start to the first step')
    return emit(rows, RESTART_COLUMNS, args.json)
  if args.vs_torch:
    from resnet_jax.torch_peers import has_peer
    missing = [n for n in names if not has_peer(n)]
    if missing:
      parser.error(f'--vs-torch: no torchvision/timm twin for {missing}')
  if args.convs:
    for name in names:
      rows = convolution_rows(name, batch=args.batch, image_size=args.image_size,
                              dtype=args.dtype, vs_torch=args.vs_torch, steps=args.steps,
                              rounds=args.rounds, warmup=args.warmup)
      if args.json:
        emit(rows, None, True)
      else:
        print_convolutions(rows)
    return
  if args.profile:
    for name in names:
      row = profile_row(name, batch=args.batch, image_size=args.image_size, dtype=args.dtype,
                        mode=args.mode, steps=args.steps)
      if args.json:
        emit([row], None, True)
      else:
        print_profile(row)
    return
  peak = peak_matmul_flops(jnp.bfloat16 if args.dtype == 'bfloat16' else jnp.float32)
  rows = []
  for name in names:
    rows.append(step_row(name, batch=args.batch, image_size=args.image_size, dtype=args.dtype,
                         mode=args.mode, vs_torch=args.vs_torch,
                         torch_compile=args.torch_compile, steps=args.steps, rounds=args.rounds,
                         warmup=args.warmup, peak_flops=peak))
    if args.json:
      emit(rows[-1:], None, True)
  if not args.json:
    print(f'# {jax.devices()[0].device_kind}; matmul peak {peak / 1e12:.3f} TFLOP/s ({args.dtype})')
    print_rows(rows, STEP_COLUMNS)
