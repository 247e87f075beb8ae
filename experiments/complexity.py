"""Accuracy against operations for every registered ImageNet model (Canziani et al. 2016, Fig. 2).

  python experiments/complexity.py --workdir=DIR [--budget=cpu|full] [--models=a,b]

For each model: parameters, GFLOPs of one image's forward pass from XLA's cost analysis of the
compiled program, batch-1 latency and batched throughput of the jitted forward pass on the current
device (resnet_jax.benchmark's timing), and the top-1 accuracy reported for it
(experiments/configs/complexity.py). Writes DIR/complexity.csv and DIR/complexity.png: top-1
versus GFLOPs with bubbles sized by parameters, and latency versus GFLOPs. The five nets of the
architecture history's latency table (resnet18, alexnet, vgg16, squeezenet1_0, mobilenet_v1)
get its Titan Xp figure beside ours (`titan_xp_ms`), printed as a second table.
"""
from __future__ import annotations

import csv
import os
import sys

from absl import app, flags, logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments.configs import complexity as complexity_config  # noqa: E402
from resnet_jax import xla_flags  # noqa: E402
from resnet_jax.bench.complexity import natural_key  # noqa: E402
from resnet_jax.bench.step import step_row  # noqa: E402
from resnet_jax.models import list_models, model_spec  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'],
                            'cpu: throughput at batch 8; full: batch 64, more rounds.')
_MODELS = flags.DEFINE_list('models', [], 'Registered ImageNet models (default: all of them).')
_BATCH = flags.DEFINE_integer('throughput_batch', 0, 'Override the budget\'s batch (0: keep).')

FIELDS = ['model', 'params', 'gflops', 'latency_ms', 'titan_xp_ms', 'batch', 'images_per_sec',
          'top1', 'top1_source', 'device']


def imagenet_models() -> list[str]:
  return sorted((m for m in list_models() if model_spec(m)['num_classes'] == 1000),
                key=natural_key)


def measure(name: str, config) -> dict:
  peak = 1.0  # MFU is not reported here; the timing and FLOP counts do not depend on it.
  timing = dict(image_size=None, dtype=config.dtype, mode='infer', vs_torch=False,
                torch_compile=False, peak_flops=peak)
  single = step_row(name, **config.latency, **timing)
  batched = step_row(name, **config.throughput, **timing)
  top1, source = complexity_config.REPORTED_TOP1.get(name, (None, ''))
  return {'model': name, 'params': single['params'], 'gflops': single['flops_per_step'] / 1e9,
          'latency_ms': 1e3 / single['steps_per_sec'],
          'titan_xp_ms': complexity_config.HISTORY_LATENCY_MS.get(name), 'batch': batched['batch'],
          'images_per_sec': batched['images_per_sec'], 'top1': top1, 'top1_source': source,
          'device': single['device']}


def plot(rows: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
  rated = [r for r in rows if r['top1'] is not None]
  left.scatter([r['gflops'] for r in rated], [r['top1'] for r in rated],
               s=[r['params'] / 2e5 for r in rated], alpha=0.45, color='tab:blue')
  for r in rated:
    left.annotate(r['model'], (r['gflops'], r['top1']), fontsize=7, ha='center', va='bottom')
  left.set_xlabel('GFLOPs per image (forward, XLA cost analysis)')
  left.set_ylabel('top-1 accuracy (%)')
  left.set_title('accuracy vs operations (bubble area ~ parameters)')
  left.grid(alpha=0.3)
  right.scatter([r['gflops'] for r in rows], [r['latency_ms'] for r in rows], color='tab:orange')
  for r in rows:
    right.annotate(r['model'], (r['gflops'], r['latency_ms']), fontsize=7)
  right.set_xscale('log')
  right.set_yscale('log')
  right.set_xlabel('GFLOPs per image')
  right.set_ylabel(f"batch-1 latency (ms, {rows[0]['device']})")
  right.set_title('latency vs operations')
  right.grid(alpha=0.3, which='both')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  os.makedirs(_WORKDIR.value, exist_ok=True)
  config = complexity_config.get_config(_BUDGET.value)
  if _BATCH.value:
    config.throughput.batch = _BATCH.value
  known = imagenet_models()
  names = _MODELS.value or known
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ValueError(f'--models {unknown}: not registered ImageNet models; choose from {known}')
  rows = []
  for name in names:
    rows.append(measure(name, config))
    logging.info('%s: %.3f GFLOPs, %.1f ms at batch 1, %.1f img/s at batch %d', name,
                 rows[-1]['gflops'], rows[-1]['latency_ms'], rows[-1]['images_per_sec'],
                 rows[-1]['batch'])
  with open(os.path.join(_WORKDIR.value, 'complexity.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, os.path.join(_WORKDIR.value, 'complexity.png'))
  print(f"{'model':20s} {'params':>12s} {'GFLOPs':>8s} {'ms @1':>8s} {'img/s':>8s} {'top-1':>6s}")
  for r in rows:
    top1 = f"{r['top1']:.1f}" if r['top1'] is not None else ''
    print(f"{r['model']:20s} {r['params']:12,d} {r['gflops']:8.3f} {r['latency_ms']:8.1f} "
          f"{r['images_per_sec']:8.1f} {top1:>6s}")
  history = [r for r in rows if r['titan_xp_ms'] is not None]
  if history:
    print(f"\nbatch-1 latency, ms: ours on {history[0]['device']} beside the architecture "
          "history's Titan Xp")
    print(f"{'model':20s} {'ours':>8s} {'Titan Xp':>8s}")
    for r in history:
      print(f"{r['model']:20s} {r['latency_ms']:8.1f} {r['titan_xp_ms']:8.1f}")


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
