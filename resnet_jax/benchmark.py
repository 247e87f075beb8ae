"""Speed, memory and complexity of the models, as tables.

  python -m resnet_jax.benchmark --model cifar_resnet20 [--batch 128] [--image-size 32]
      [--dtype float32|bfloat16] [--mode train|infer] [--vs-torch] [--json]
  python -m resnet_jax.benchmark --model cifar_resnet20 --profile [--steps 3]
  python -m resnet_jax.benchmark --model cifar_resnet20 --convs [--vs-torch]
  python -m resnet_jax.benchmark --all --mode infer --batch 1      (every registered model)
  python -m resnet_jax.benchmark --mode pipeline [--images DIR] [--workers N]
  python -m resnet_jax.benchmark --zoo [--models resnet50,vgg16] [--markdown]

A step row gives the parameters, the FLOPs of the compiled step (XLA's cost analysis; a
multiply-add counts 2), its peak device memory (XLA's memory analysis: arguments + outputs +
temporaries - donated aliases), steps/s and images/s (median of timed rounds after warm-up), and
model-FLOPs utilisation against the matmul peak measured on the same device in the same dtype.
`train` times the project's own `train.train_step` (SGD with momentum and weight decay, BN in
training mode, on one device); `infer` the eval-mode forward pass.

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

`--zoo` prints forward FLOPs at batch 1 and the registered input size for the README's table.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import glob
import gzip
import json
import os
import re
import statistics
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.core import jaxprs_in_params

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
  # Fractional max pooling nets draw their pooling regions from the `fmp` stream, at eval too.
  apply = functools.partial(model.apply, train=False, rngs={'fmp': jax.random.key(0)})
  lowered = jax.jit(apply).lower(variables, x)
  cost = lowered.cost_analysis() if deep_net(name) else lowered.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # Older JAX: one per program.
  return float(cost['flops'])


def deep_net(name: str) -> bool:
  return sum(model_spec(name)['kwargs'].get('stage_sizes', ())) > 150


# The paper of each family, by a pattern searched in the name (first match wins).
PAPERS = [
    (r'^lenet', 'LeCun et al. 1998'), (r'cifar_resnet', 'He et al. 2015, Sec. 4.2'),
    (r'plain', 'He et al. 2015, Sec. 4 (plain)'), (r'preact', 'He et al. 2016'),
    (r'^resnet', 'He et al. 2015'), (r'alexnet', 'Krizhevsky et al. 2012'),
    (r'vgg', 'Simonyan & Zisserman 2015'), (r'nin$', 'Lin et al. 2014'),
    (r'googlenet', 'Szegedy et al. 2015'), (r'inception_v3', 'Szegedy et al. 2016'),
    (r'inception_(v4|resnet)', 'Szegedy et al. 2017'), (r'xception', 'Chollet 2017'),
    (r'mobilenet', 'Howard et al. 2017'), (r'squeezenet', 'Iandola et al. 2016'),
    (r'^fmp', 'Graham 2014'), (r'^mlp', 'Glorot & Bengio 2010; Klambauer et al. 2017'),
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


# ---------------------------------------------------------------------------------------------
# Step timing: ours, and the torch twin in the same rounds.


def peak_matmul_flops(dtype, device=None, size: int | None = None, repeats: int = 5) -> float:
  """FLOP/s of the best of `repeats` square matmuls in `dtype`: the MFU denominator."""
  device = device or jax.devices()[0]
  size = size or (1024 if device.platform == 'cpu' else 8192)
  a = jax.device_put(jnp.ones((size, size), dtype), device)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size ** 3 / best


@dataclasses.dataclass
class Timed:
  """A step to time: `run()` does one step and returns something to block on."""
  run: Callable[[], object]
  sync: Callable[[object], None]
  flops: float = float('nan')
  peak_bytes: int = 0
  compiled: object = None  # our compiled program (jax.stages.Compiled), for --profile


def _compiled_costs(compiled) -> tuple[float, int]:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  peak = 0
  if mem is not None:
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
  return float(cost.get('flops', float('nan'))), int(peak)


def jax_step(name: str, batch: int, image_size: int, dtype: str, mode: str) -> Timed:
  """Our train step (or eval forward) of `name` on one device, compiled, with its XLA costs."""
  from resnet_jax import train
  spec = model_spec(name)
  compute = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  model = create_model(name, num_classes=spec['num_classes'], dtype=compute)
  shape = (image_size, image_size, spec['in_channels'])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
  labels = rng.integers(0, spec['num_classes'], (batch,), dtype=np.int32)
  key = jax.random.key(0)
  if mode == 'infer':
    variables = jax.jit(functools.partial(train.initial_variables, model, image_shape=shape))(key)
    x = jax.device_put(train.normalize(images, (127.5,), (127.5,), compute))
    forward = jax.jit(functools.partial(model.apply, train=False, rngs={'fmp': key}))
    compiled = forward.lower(variables, x).compile()
    flops, peak = _compiled_costs(compiled)
    return Timed(lambda: forward(variables, x), jax.block_until_ready, flops, peak, compiled)
  # torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4), the peer's optimizer.
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
  parallel = train.DataParallel('shard_map', devices=jax.devices()[:1])
  state = jax.jit(functools.partial(train.create_train_state, model, tx, image_shape=shape))(key)
  step = parallel.map(functools.partial(train.train_step, mean=(127.5,), std=(127.5,),
                                        dtype=compute), ('state', 'batch', 'const'),
                      donate_state=True)
  data = parallel.shard_batch({'image': images, 'label': labels})
  compiled = step.lower(state, data, key).compile()
  flops, peak = _compiled_costs(compiled)
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], data, key)
    return metrics
  return Timed(run, jax.block_until_ready, flops, peak, compiled)


def _torch_device():
  """torch's GPU when it has one, else the CPU, and a `sync(_)` that waits for its work (a Timed
  sync)."""
  import torch
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

  def sync(_):
    if device.type == 'cuda':
      torch.cuda.synchronize()
  return device, sync


def torch_step(name: str, batch: int, image_size: int, dtype: str, mode: str,
               compile_model: bool = False) -> Timed:
  """The torch twin's training step (SGD, cross-entropy) or eval forward, channels-last."""
  import torch

  from resnet_jax.torch_peers import torch_peer
  spec = model_spec(name)
  device, sync = _torch_device()
  model = torch_peer(name, spec['num_classes']).to(device, memory_format=torch.channels_last)
  x = torch.randn(batch, spec['in_channels'], image_size, image_size, device=device)
  x = x.contiguous(memory_format=torch.channels_last)
  y = torch.randint(0, spec['num_classes'], (batch,), device=device)
  forward = torch.compile(model) if compile_model else model
  autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                               enabled=dtype == 'bfloat16')

  if mode == 'infer':
    model.eval()

    def run():
      with torch.inference_mode(), autocast():
        return forward(x)
    return Timed(run, sync)
  model.train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

  def run():
    opt.zero_grad(set_to_none=True)
    with autocast():
      out = forward(x)
      loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
    loss.backward()
    opt.step()
    return loss
  return Timed(run, sync)


def time_alternating(steps: dict[str, Timed], steps_per_round: int, rounds: int,
                     warmup: int) -> dict[str, float]:
  """Median seconds per step of each entry, timed in turn within every round after warm-up."""
  for timed in steps.values():
    for _ in range(warmup):
      timed.sync(timed.run())
  samples = {k: [] for k in steps}
  for _ in range(rounds):
    for k, timed in steps.items():
      start = time.perf_counter()
      for _ in range(steps_per_round):
        out = timed.run()
      timed.sync(out)
      samples[k].append((time.perf_counter() - start) / steps_per_round)
  return {k: statistics.median(v) for k, v in samples.items()}


def step_row(name: str, *, batch: int, image_size: int | None, dtype: str, mode: str,
             vs_torch: bool, torch_compile: bool, steps: int, rounds: int, warmup: int,
             peak_flops: float) -> dict:
  size = image_size or model_spec(name)['input_size']
  timed = {'jax': jax_step(name, batch, size, dtype, mode)}
  if vs_torch:
    timed['torch'] = torch_step(name, batch, size, dtype, mode, torch_compile)
  seconds = time_alternating(timed, steps, rounds, warmup)
  ours = timed['jax']
  row = {'model': name, 'mode': mode, 'batch': batch, 'image_size': size, 'dtype': dtype,
         'params': count_params(name), 'flops_per_step': ours.flops,
         'peak_bytes': ours.peak_bytes, 'steps_per_sec': 1 / seconds['jax'],
         'images_per_sec': batch / seconds['jax'],
         'mfu': ours.flops / seconds['jax'] / peak_flops, 'peak_matmul_flops': peak_flops,
         'device': jax.devices()[0].device_kind}
  if vs_torch:
    row['torch_images_per_sec'] = batch / seconds['torch']
    row['vs_torch'] = seconds['torch'] / seconds['jax']
  return row


# In the compiled HLO text: an instruction (name, result type), the JAX op it was lowered from,
# the computation a fusion calls, and the header of a computation.
_HLO_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ')
_HLO_OP_NAME = re.compile(r'op_name="([^"]*)"')
_HLO_CALLS = re.compile(r'calls=%?([\w.\-]+)')
_HLO_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$')


def _hlo_instructions(text: str) -> dict[str, tuple[str, str]]:
  """Each instruction's result type and source op. A fusion without a source op of its own takes
  the first one inside the computation it calls or, where XLA dropped them all (the weight
  gradients of convolutions), that computation's root op and window."""
  found, calls, computation_source, computation = {}, {}, {}, None
  for line in text.splitlines():
    if header := _HLO_COMPUTATION.match(line):
      computation = header.group(1)
    elif match := _HLO_INSTRUCTION.match(line):
      source = _HLO_OP_NAME.search(line)
      found[match.group(1)] = (match.group(2), source.group(1) if source else '')
      if computation and source:
        computation_source.setdefault(computation, source.group(1))
      elif computation and line.lstrip().startswith('ROOT '):
        opcode = re.search(r' = \S+ ([\w\-]+)\(', line)
        window = re.search(r'window=\{([^}]*)\}', line)
        computation_source.setdefault(computation, ' '.join(
            [opcode.group(1) if opcode else '?'] + ([window.group(1)] if window else [])))
      if called := _HLO_CALLS.search(line):
        calls[match.group(1)] = called.group(1)
  for name, called in calls.items():
    if not found[name][1]:
      found[name] = (found[name][0], computation_source.get(called, ''))
  return found


def profile_row(name: str, *, batch: int, image_size: int | None, dtype: str, mode: str,
                steps: int, top: int = 12) -> dict:
  """Where the time of our step goes: `steps` steps under `jax.profiler`, the trace's events of
  the compiled program's instructions summed per kind (the instruction name without its number:
  `ynn_fusion`, `transpose_copy_fusion`, ...) and the `top` single instructions with the JAX op
  each comes from. `step_ms` is the median of untraced steps; `ops_ms` what the traced
  instructions add up to per step (the rest is dispatch and waiting)."""
  size = image_size or model_spec(name)['input_size']
  timed = jax_step(name, batch, size, dtype, mode)
  step_seconds = time_alternating({'jax': timed}, 1, max(steps, 3), warmup=2)['jax']
  instructions = _hlo_instructions(timed.compiled.as_text())
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(steps):
        out = timed.run()
      timed.sync(out)
    [trace] = glob.glob(os.path.join(logdir, '**', 'perfetto_trace.json.gz'), recursive=True)
    with gzip.open(trace) as f:
      events = json.load(f)['traceEvents']
  per_op: dict[str, float] = {}
  for event in events:
    if event.get('ph') == 'X' and event.get('name') in instructions:
      per_op[event['name']] = per_op.get(event['name'], 0.0) + event['dur'] / 1e3 / steps
  kinds: dict[str, dict] = {}
  for op, ms in per_op.items():
    kind = kinds.setdefault(re.sub(r'\.\d+$', '', op), {'count': 0, 'ms': 0.0})
    kind['count'] += 1
    kind['ms'] += ms
  largest = sorted(per_op.items(), key=lambda item: -item[1])[:top]
  return {'model': name, 'mode': mode, 'batch': batch, 'image_size': size, 'dtype': dtype,
          'device': jax.devices()[0].device_kind, 'step_ms': step_seconds * 1e3,
          'ops_ms': sum(per_op.values()),
          'kinds': dict(sorted(kinds.items(), key=lambda item: -item[1]['ms'])),
          'top': [{'op': op, 'ms': ms, 'shape': instructions[op][0], 'source': instructions[op][1]}
                  for op, ms in largest]}


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


def print_rows(rows: list[dict], columns: list[tuple[str, str, Callable]]) -> None:
  cells = [[fmt(r[key]) if key in r else '' for key, _, fmt in columns] for r in rows]
  heads = [head for _, head, _ in columns]
  widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
  print('  '.join(h.rjust(w) for h, w in zip(heads, widths)))
  for row in cells:
    print('  '.join(v.rjust(w) for v, w in zip(row, widths)))


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


# ---------------------------------------------------------------------------------------------
# The convolutions of a model, one by one.


def _convolutions(jaxpr, times: int = 1):
  """(equation, times applied) for every convolution in `jaxpr` and the jaxprs inside it."""
  for eqn in jaxpr.eqns:
    if eqn.primitive is jax.lax.conv_general_dilated_p:
      yield eqn, times
    inner = times * eqn.params['length'] if eqn.primitive.name == 'scan' else times
    for sub in jaxprs_in_params(eqn.params):
      yield from _convolutions(sub, inner)


def model_convolutions(name: str, batch: int, image_size: int, dtype: str) -> list[dict]:
  """Each distinct convolution of the training-mode forward pass of `name`: its operands'
  shapes and dtype, the primitive's parameters, and how many times one step applies it."""
  spec = model_spec(name)
  compute = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  model = create_model(name, num_classes=spec['num_classes'], dtype=compute)
  x = jax.ShapeDtypeStruct((batch, image_size, image_size, spec['in_channels']), compute)
  key = jax.random.key(0)
  rngs = {'params': key, 'dropout': key, 'drop_path': key, 'fmp': key}
  variables = jax.eval_shape(functools.partial(model.init, train=False), rngs, x)
  apply = functools.partial(model.apply, train=True, mutable=['batch_stats'], rngs=rngs)
  found: dict[tuple, dict] = {}
  for eqn, times in _convolutions(jax.make_jaxpr(apply)(variables, x).jaxpr):
    lhs, rhs = (v.aval for v in eqn.invars)
    signature = (lhs.shape, rhs.shape, str(lhs.dtype), repr(sorted(eqn.params.items())))
    entry = found.setdefault(signature, {'lhs': lhs, 'rhs': rhs, 'params': eqn.params,
                                         'count': 0, 'input_grad': lhs.shape != x.shape})
    entry['count'] += times
  return list(found.values())


def _torch_convolution(conv: dict, out_shape) -> dict[str, Callable] | None:
  """torch's forward, input-gradient and weight-gradient of `conv`, channels-last, on the GPU
  when torch has one, and 'sync' to wait for them; None where it has no torch equivalent (not
  2-D NHWC/HWIO, input dilation, uneven padding)."""
  import torch
  params = conv['params']
  numbers = params['dimension_numbers']
  padding = params['padding']
  if (numbers.lhs_spec != (0, 3, 1, 2) or numbers.rhs_spec != (3, 2, 0, 1)
      or any(d != 1 for d in params['lhs_dilation']) or params['batch_group_count'] != 1
      or any(lo != hi for lo, hi in padding)):
    return None
  dtype = torch.bfloat16 if conv['lhs'].dtype == jnp.bfloat16 else torch.float32
  n, h, w, c = conv['lhs'].shape
  kh, kw, cin, cout = conv['rhs'].shape
  device, sync = _torch_device()

  def tensor(*shape):
    return torch.randn(*shape, dtype=dtype, device=device).contiguous(
        memory_format=torch.channels_last)
  x, weight = tensor(n, c, h, w), tensor(cout, cin, kh, kw)
  grad = tensor(out_shape[0], out_shape[3], out_shape[1], out_shape[2])
  geometry = dict(stride=tuple(params['window_strides']), padding=tuple(p for p, _ in padding),
                  dilation=tuple(params['rhs_dilation']), groups=params['feature_group_count'])

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(
        grad, x, weight, None, geometry['stride'], geometry['padding'], geometry['dilation'],
        False, (0, 0), geometry['groups'], mask)

  def forward():
    with torch.no_grad():
      return torch.nn.functional.conv2d(x, weight, **geometry)
  return {'fwd': forward, 'dx': backward((True, False, False)),
          'dw': backward((False, True, False)),
          'sync': sync}


def convolution_rows(name: str, *, batch: int, image_size: int | None, dtype: str,
                     vs_torch: bool, steps: int, rounds: int, warmup: int) -> list[dict]:
  """Milliseconds of each distinct convolution of `name` alone: forward, input gradient (`dx`)
  and weight gradient (`dw`), ours compiled by XLA and, with `vs_torch`, torch's (oneDNN on
  CPU), timed alternating. XLA:CPU runs convolutions on its thread pool outside the profiler's
  trace, so this is where `--profile` cannot see."""
  size = image_size or model_spec(name)['input_size']
  rows = []
  for conv in model_convolutions(name, batch, size, dtype):
    lhs, rhs = conv['lhs'], conv['rhs']
    bind = functools.partial(jax.lax.conv_general_dilated_p.bind, **conv['params'])
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in (lhs, rhs))
    forward = jax.jit(bind)
    out = forward(x, w)
    g = jnp.asarray(rng.standard_normal(out.shape), out.dtype)
    input_grad = jax.jit(lambda x, w, g: jax.vjp(lambda x: bind(x, w), x)[1](g)[0])
    weight_grad = jax.jit(lambda x, w, g: jax.vjp(lambda w: bind(x, w), w)[1](g)[0])
    timed = {'fwd': Timed(lambda: forward(x, w), jax.block_until_ready),
             'dx': Timed(lambda: input_grad(x, w, g), jax.block_until_ready),
             'dw': Timed(lambda: weight_grad(x, w, g), jax.block_until_ready)}
    theirs = _torch_convolution(conv, out.shape) if vs_torch else None
    if theirs:
      sync = theirs.pop('sync')
      for kind, run in theirs.items():
        timed[f'torch_{kind}'] = Timed(run, sync)
    seconds = time_alternating(timed, steps, rounds, warmup)
    groups = conv['params']['feature_group_count']
    row = {'model': name, 'batch': batch, 'dtype': dtype, 'count': conv['count'],
           'input': 'x'.join(map(str, lhs.shape)),
           'kernel': f'{rhs.shape[0]}x{rhs.shape[1]}/{conv["params"]["window_strides"][0]}',
           'channels': f'{lhs.shape[-1]}->{rhs.shape[-1]}' + (f' g{groups}' if groups > 1 else ''),
           'gflop': 2 * out.size * int(np.prod(rhs.shape[:-1])) / 1e9,
           'input_grad': conv['input_grad'],
           **{f'{k}_ms': v * 1e3 for k, v in seconds.items()}}
    ours = sum(row[f'{k}_ms'] for k in ('fwd', 'dx', 'dw') if k != 'dx' or row['input_grad'])
    if theirs:
      row['vs_torch'] = sum(row[f'torch_{k}_ms'] for k in ('fwd', 'dx', 'dw')
                            if k != 'dx' or row['input_grad']) / ours
    rows.append(row)
  return rows


CONV_COLUMNS = [
    ('count', 'count', str), ('input', 'input NHWC', str), ('kernel', 'kernel/stride', str),
    ('channels', 'channels', str), ('gflop', 'GFLOP', lambda v: f'{v:.3f}'),
    *[(f'{k}_ms', f'{k} ms', lambda v: f'{v:.2f}') for k in ('fwd', 'dx', 'dw')],
    *[(f'torch_{k}_ms', f'torch {k}', lambda v: f'{v:.2f}') for k in ('fwd', 'dx', 'dw')],
    ('vs_torch', 'x torch', lambda v: f'{v:.2f}'),
]


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


# ---------------------------------------------------------------------------------------------
# The host input pipeline alone.


def synthetic_jpegs(folder: str, count: int, seed: int = 0) -> list[str]:
  """`count` 500x375 photo-like JPEGs (quality 90): smooth colour fields with grain, about the
  size and entropy of ImageNet training images (their mean is about 110 KB at ~400x350)."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BICUBIC), np.float32)
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f'{i:05d}.jpg')
    Image.fromarray(pixels).save(path, quality=90)
    paths.append(path)
  return paths


def pipeline_row(images: str, count: int, image_size: int, workers: int) -> dict:
  """Images/s of decode + random-resized crop + flip, in this process (one core) and, with
  `workers`, through Grain's worker processes (the training loader's own path)."""
  import grain

  from resnet_jax.data.augment import TrainAugment
  from resnet_jax.data.sources import FolderSource
  with tempfile.TemporaryDirectory() as tmp:
    if images:
      paths = sorted(os.path.join(images, f) for f in os.listdir(images)
                     if f.lower().endswith(('.jpg', '.jpeg')))[:count]
      if not paths:
        raise ValueError(f'--images {images}: no .jpg/.jpeg files there')
    else:
      paths = synthetic_jpegs(tmp, count)
    source = FolderSource(paths, [0] * len(paths), 'RGB')
    augment = TrainAugment('imagenet', image_size)
    rng = np.random.default_rng(0)
    for i in range(min(8, len(paths))):  # Warm-up: imports, PIL's codecs, caches.
      augment.random_map(source[i], rng)
    start = time.perf_counter()
    for i in range(len(paths)):
      augment.random_map(source[i], rng)
    one_core = len(paths) / (time.perf_counter() - start)
    row = {'mode': 'pipeline', 'images': images or 'synthetic 500x375 q90',
           'mean_kb': float(np.mean([os.path.getsize(p) for p in paths]) / 1024),
           'count': len(paths), 'image_size': image_size, 'images_per_sec_per_core': one_core}
    if workers:
      from absl import flags
      if not flags.FLAGS.is_parsed():  # Grain's workers read its absl flags (their defaults).
        flags.FLAGS.mark_as_parsed()
      dataset = (grain.MapDataset.source(source).seed(0).shuffle().repeat(None)
                 .random_map(augment).batch(32))
      it = iter(dataset.to_iter_dataset().mp_prefetch(
          grain.MultiprocessingOptions(num_workers=workers)))
      next(it)
      batches = max(1, 4 * len(paths) // 32)
      start = time.perf_counter()
      for _ in range(batches):
        next(it)
      row['workers'] = workers
      row['images_per_sec_workers'] = batches * 32 / (time.perf_counter() - start)
  return row


PIPELINE_COLUMNS = [
    ('images', 'images', str), ('mean_kb', 'mean KB', lambda v: f'{v:.0f}'),
    ('count', 'count', str), ('image_size', 'crop', str),
    ('images_per_sec_per_core', 'img/s (1 core)', lambda v: f'{v:.0f}'),
    ('workers', 'workers', str),
    ('images_per_sec_workers', 'img/s (workers)', lambda v: f'{v:.0f}'),
]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.benchmark', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', default='', help='comma-separated registered names')
  parser.add_argument('--all', action='store_true', help='every registered model')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--image-size', type=int, default=0, help="default: the model's own")
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--mode', choices=('train', 'infer', 'pipeline'), default='train')
  parser.add_argument('--vs-torch', action='store_true',
                      help='time the torchvision/timm twin alternating with ours')
  parser.add_argument('--torch-compile', action='store_true', help='torch.compile the twin')
  parser.add_argument('--steps', type=int, default=10, help='steps per timed round')
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--json', action='store_true', help='one JSON object per line instead')
  parser.add_argument('--profile', action='store_true',
                      help='where our step spends its time, per XLA instruction kind (traced)')
  parser.add_argument('--convs', action='store_true',
                      help="each distinct convolution of the model alone: forward, input and "
                           "weight gradient (with --vs-torch, torch's too)")
  parser.add_argument('--images', default='', help='pipeline: a folder of JPEGs to read')
  parser.add_argument('--count', type=int, default=256, help='pipeline: images to time')
  parser.add_argument('--workers', type=int, default=0, help='pipeline: Grain worker processes')
  parser.add_argument('--zoo', action='store_true',
                      help='parameters and forward GFLOPs of registered models')
  parser.add_argument('--models', default='', help='--zoo: comma-separated names (default: all)')
  parser.add_argument('--markdown', action='store_true', help='--zoo: print a Markdown table')
  args = parser.parse_args(argv)

  if args.mode == 'pipeline':
    rows = [pipeline_row(args.images, args.count, args.image_size or 224, args.workers)]
    return _emit(rows, PIPELINE_COLUMNS, args.json)
  names = [n for n in (args.models if args.zoo else args.model).split(',') if n]
  if args.all or (args.zoo and not names):
    names = sorted(list_models(), key=natural_key)
  if not names:
    parser.error('name a model (--model resnet50), or pass --all, --zoo or --mode pipeline')
  unknown = sorted(set(names) - set(list_models()))
  if unknown:
    parser.error(f'unknown model {unknown}; see resnet_jax.models.list_models()')
  if args.zoo:
    return print_table(zoo_rows(names), args.markdown)
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
      _emit(rows, None, True) if args.json else print_convolutions(rows)
    return
  if args.profile:
    for name in names:
      row = profile_row(name, batch=args.batch, image_size=args.image_size, dtype=args.dtype,
                        mode=args.mode, steps=args.steps)
      if args.json:
        print(json.dumps(row), flush=True)
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
      print(json.dumps(rows[-1]), flush=True)
  if not args.json:
    print(f'# {jax.devices()[0].device_kind}; matmul peak {peak / 1e12:.3f} TFLOP/s ({args.dtype})')
    print_rows(rows, STEP_COLUMNS)


def _emit(rows: list[dict], columns, as_json: bool) -> None:
  if as_json:
    for row in rows:
      print(json.dumps(row))
  else:
    print_rows(rows, columns)


if __name__ == '__main__':
  main()
