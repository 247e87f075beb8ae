"""The accelerator benchmark in one command: what a lent GPU (or TPU) should be asked, in one go.

  python -m resnet_jax.bench.accelerator --out DIR [--wheels .whl] [--tiny]
  python -m resnet_jax.bench.accelerator --download-wheels .whl     (here, where pip reaches PyPI)

It prints one table and writes it as DIR/accelerator.json:
  - resnet50 training, batch 256 at 224x224, bfloat16 and float32: our train step against the
    torch twin three ways (eager channels-last, the same under autocast for bf16, and
    torch.compile), images/s;
  - cifar_resnet20 training with the split on device (data.on_device: gather, pad-crop and flip
    in the same program, many steps per call), batch 128 and 512, images/s;
  - batch-1 inference latency of five nets of the architecture's history (AlexNet, VGG-16,
    GoogLeNet, ResNet-50, MobileNet v1);
  - for each of our rows the achieved TFLOP/s (XLA's FLOPs of the compiled step / its time) and
    its share of the device's bf16 (or fp32) matmul peak, measured first on the same device.

A GPU machine that lacks this package's data and config dependencies (grain, array-record,
ml-collections, portpicker, tensorboardX: not in the accelerator image) gets them from wheels
carried in the working tree: `--download-wheels .whl` here fetches them, with what they need, for
Python 3.12 on manylinux x86-64 (their versions are this environment's; about 22 MB);
`--wheels .whl` there pip-installs those that are missing from that folder alone, taking only
what the image lacks, before anything imports them. Nothing is fetched there.

`--tiny` runs every kind of row at toy sizes (a few 32x32 images, two steps, one on-device
batch size, torch.compile with its 'eager' backend, which traces with dynamo but skips
inductor's C++ compile): the test suite runs it on the CPU (about two minutes, nearly all of it
compiling) so the command cannot rot. Its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time

# (distribution, module) the benchmark imports that the accelerator image lacks.
CARRIED = (('grain', 'grain'), ('array-record', 'array_record'),
           ('ml-collections', 'ml_collections'), ('portpicker', 'portpicker'),
           ('tensorboardX', 'tensorboardX'))
HISTORY = ('alexnet', 'vgg16', 'googlenet', 'resnet50', 'mobilenet_v1')
# pip's platform tags for the accelerator image (Python 3.12, glibc x86-64).
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64')


def download_wheels(folder: str) -> list[str]:
  """pip-downloads this environment's versions of CARRIED, with what they need, as wheels for
  the accelerator image (Python 3.12, manylinux x86-64) into `folder`; returns the files."""
  from importlib import metadata
  os.makedirs(folder, exist_ok=True)
  pins = [f'{dist}=={metadata.version(dist)}' for dist, _ in CARRIED]
  platforms = [flag for platform in PLATFORMS for flag in ('--platform', platform)]
  subprocess.run([sys.executable, '-m', 'pip', 'download', '--only-binary=:all:',
                  '--python-version', '3.12', '--implementation', 'cp', *platforms, '-d', folder,
                  *pins], check=True)
  return sorted(f for f in os.listdir(folder) if f.endswith('.whl'))


def install_missing(wheels: str, target: str | None = None) -> list[str]:
  """pip-installs the distributions of CARRIED whose module is missing, from the wheels in
  `wheels` alone (no index), into this environment (or `target`); pip takes from the folder only
  what the environment lacks. Returns the modules that were missing (none: nothing done)."""
  missing = [(dist, module) for dist, module in CARRIED
             if importlib.util.find_spec(module) is None]
  if not missing:
    return []
  names = [module for _, module in missing]
  if not (wheels and os.path.isdir(wheels)
          and any(f.endswith('.whl') for f in os.listdir(wheels))):
    raise SystemExit(f'missing {names} and no wheels to install them from (--wheels '
                     f'{wheels or "not given"}): run `python -m resnet_jax.bench.accelerator '
                     '--download-wheels .whl` where pip reaches PyPI and carry .whl')
  where = ['--target', target] if target else []
  subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index', '--find-links',
                  wheels, *where, *(dist for dist, _ in missing)], check=True)
  if target:
    sys.path.insert(0, target)
  importlib.invalidate_caches()
  for module in names:  # Imported here, so that a wheel short of a dependency fails now.
    importlib.import_module(module)
  return names


def _ours(timed, seconds: float, batch: int, peak: float) -> dict:
  return {'images_per_sec': batch / seconds, 'tflops': timed.flops / seconds / 1e12,
          'peak_share': timed.flops / seconds / peak}


def resnet50_rows(*, batch: int, image_size: int, dtypes, peaks: dict, steps: int, rounds: int,
                  warmup: int, compile_backend: str) -> list[dict]:
  """Our resnet50 train step and the torch twin's (eager, and torch.compile), per dtype."""
  from resnet_jax.bench.step import jax_step, time_alternating, torch_step
  rows = []
  for dtype in dtypes:
    timed = {'ours': jax_step('resnet50', batch, image_size, dtype, 'train'),
             'torch eager': torch_step('resnet50', batch, image_size, dtype, 'train')}
    timed['torch.compile'] = torch_step('resnet50', batch, image_size, dtype, 'train',
                                        compile_model=True, compile_backend=compile_backend)
    seconds = time_alternating(timed, steps, rounds, warmup)
    for impl, s in seconds.items():
      row = {'benchmark': 'resnet50 train', 'impl': impl, 'dtype': dtype, 'batch': batch,
             'image_size': image_size, 'images_per_sec': batch / s}
      if impl == 'ours':
        row.update(_ours(timed['ours'], s, batch, peaks[dtype]))
      rows.append(row)
  return rows


def on_device_row(name: str, *, batch: int, dtype: str, examples: int, steps_per_call: int,
                  calls: int, peak: float) -> dict:
  """Training `name` with a synthetic CIFAR-sized split on the devices, as the main job does with
  config.dataset.on_device ('cifar' augmentation: pad 4, crop, flip): images/s over `calls`
  calls of `steps_per_call` steps, after one call that compiles."""
  import functools

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from resnet_jax.bench.step import compiled_costs
  from resnet_jax.config import base_config
  from resnet_jax.data import on_device
  from resnet_jax.data.augment import AugmentOptions
  from resnet_jax.models import create_model, model_spec
  from resnet_jax.parallel import DataParallel
  from resnet_jax.steps import create_train_state, train_step
  spec = model_spec(name)
  size = spec['input_size']
  compute = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  model = create_model(name, num_classes=spec['num_classes'], dtype=compute)
  rng = np.random.default_rng(0)
  arrays = {'image': rng.integers(0, 256, (examples, size, size, 3), dtype=np.uint8),
            'label': rng.integers(0, spec['num_classes'], (examples,), dtype=np.int32)}
  d = base_config().dataset
  augment = on_device.DeviceAugment('cifar', AugmentOptions.from_config(d),
                                    fill=np.zeros((size, size, 3), np.uint8))
  parallel = DataParallel('shard_map')
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  state = parallel.replicated_init(
      functools.partial(create_train_state, model, tx, image_shape=(size, size, 3)),
      jax.random.key(0))
  step = functools.partial(train_step, mean=(125.0,), std=(63.0,), dtype=compute)
  feed = on_device.DeviceData(parallel, step, arrays, augment, jax.random.PRNGKey(1),
                              batch_size=batch, steps_per_epoch=max(1, examples // batch),
                              max_steps=steps_per_call)
  key = jax.random.PRNGKey(2)
  state, _ = feed.train(state, steps_per_call, key, None)  # Compiles.
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(calls):
    state, metrics = feed.train(state, steps_per_call, key, None)
  jax.block_until_ready((state, metrics))
  seconds = (time.perf_counter() - start) / (calls * steps_per_call)
  # FLOPs of one step: the per-device train step alone, compiled on its own.
  one = parallel.map(step, ('state', 'batch', 'const', 'const'))
  batch_arrays = parallel.shard_batch({'image': arrays['image'][:batch],
                                       'label': arrays['label'][:batch]})
  flops, _ = compiled_costs(one.lower(state, batch_arrays, key, None).compile())
  return {'benchmark': f'{name} train on device', 'impl': 'ours', 'dtype': dtype,
          'batch': batch, 'image_size': size, 'images_per_sec': batch / seconds,
          'tflops': flops / seconds / 1e12, 'peak_share': flops / seconds / peak,
          'steps_per_call': steps_per_call}


def latency_rows(names, *, dtype: str, image_size: int | None, steps: int, rounds: int,
                 warmup: int, peak: float) -> list[dict]:
  """Batch-1 eval-mode forward of each of `names`: ms per image."""
  from resnet_jax.bench.step import jax_step, time_alternating
  from resnet_jax.models import model_spec
  rows = []
  for name in names:
    size = image_size or model_spec(name)['input_size']
    timed = jax_step(name, 1, size, dtype, 'infer')
    seconds = time_alternating({'ours': timed}, steps, rounds, warmup)['ours']
    rows.append({'benchmark': f'{name} latency', 'impl': 'ours', 'dtype': dtype, 'batch': 1,
                 'image_size': size, 'latency_ms': 1e3 * seconds, 'images_per_sec': 1 / seconds,
                 **{k: v for k, v in _ours(timed, seconds, 1, peak).items()
                    if k != 'images_per_sec'}})
  return rows


COLUMNS = [
    ('benchmark', 'benchmark', str), ('impl', 'impl', str), ('dtype', 'dtype', str),
    ('batch', 'batch', str), ('image_size', 'size', str),
    ('images_per_sec', 'img/s', lambda v: f'{v:,.0f}'),
    ('latency_ms', 'ms', lambda v: f'{v:.2f}'),
    ('tflops', 'TFLOP/s', lambda v: f'{v:.1f}' if v >= 1 else f'{v:.3f}'),
    ('peak_share', '% of peak', lambda v: f'{100 * v:.1f}'),
]


def run(args) -> dict:
  """Every row, in the order of the module's doc; returns the JSON document."""
  import jax
  import jax.numpy as jnp

  from resnet_jax.bench.step import peak_matmul_flops
  started = time.perf_counter()
  tiny = args.tiny
  device = jax.devices()[0]
  peaks = {'bfloat16': peak_matmul_flops(jnp.bfloat16, size=256 if tiny else None),
           'float32': peak_matmul_flops(jnp.float32, size=256 if tiny else None)}
  timing = dict(steps=2, rounds=2, warmup=1) if tiny else dict(steps=10, rounds=5, warmup=3)
  rows = resnet50_rows(batch=2 if tiny else 256, image_size=32 if tiny else 224,
                       dtypes=('bfloat16', 'float32'), peaks=peaks,
                       compile_backend='eager' if tiny else 'inductor', **timing)
  for batch in (8,) if tiny else (128, 512):
    for dtype in ('bfloat16', 'float32'):
      rows.append(on_device_row('cifar_resnet20', batch=batch, dtype=dtype,
                                examples=64 if tiny else 50_000,
                                steps_per_call=2 if tiny else 100, calls=1 if tiny else 5,
                                peak=peaks[dtype]))
  rows += latency_rows(HISTORY, dtype='float32', image_size=64 if tiny else None,
                       peak=peaks['float32'], **(dict(steps=1, rounds=2, warmup=1) if tiny
                                                 else dict(steps=20, rounds=5, warmup=5)))
  return {'device': device.device_kind, 'platform': device.platform, 'tiny': tiny,
          'jax': jax.__version__, 'peak_matmul_tflops': {k: v / 1e12 for k, v in peaks.items()},
          'seconds': time.perf_counter() - started, 'rows': rows}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.bench.accelerator', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--out', help='folder for accelerator.json')
  p.add_argument('--wheels', default='', help='folder of carried wheels (installed if needed)')
  p.add_argument('--tiny', action='store_true', help='toy sizes: the CPU test of the command')
  p.add_argument('--download-wheels', metavar='FOLDER',
                 help='fetch the wheels to carry (here, with network) and exit')
  args = p.parse_args(argv)
  if args.download_wheels:
    for name in download_wheels(args.download_wheels):
      print(name)
    return
  if not args.out:
    p.error('--out is required (the folder for accelerator.json)')
  installed = install_missing(args.wheels)
  from resnet_jax import xla_flags
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends (CPU only).
  from resnet_jax.bench.cli import print_rows
  document = {**run(args), 'installed_from_wheels': installed}
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'accelerator.json'), 'w') as f:
    json.dump(document, f, indent=1)
  peaks = ', '.join(f'{k} {v:.1f}' for k, v in document['peak_matmul_tflops'].items())
  print(f"# {document['device']} ({document['platform']}), jax {document['jax']}; matmul peak "
        f"TFLOP/s: {peaks}; {document['seconds']:.0f} s in all")
  print_rows(document['rows'], COLUMNS)


if __name__ == '__main__':
  main()
