"""Step timing: our jitted train step (or eval forward) with XLA's cost and memory analysis, the
torch twin's step, both timed alternating in the same rounds, and the matmul peak for MFU.

`Timed`, `time_alternating` and `torch_device` serve the profile and the convolutions too.
"""
from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from resnet_jax.models import count_params, create_model, initial_variables, model_spec
from resnet_jax.parallel import DataParallel
from resnet_jax.steps import create_train_state, normalize, train_step


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


def compiled_costs(compiled) -> tuple[float, int]:
  """FLOPs (XLA's cost analysis) and peak bytes (arguments + outputs + temporaries - donated
  aliases, from its memory analysis) of a compiled program."""
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
  spec = model_spec(name)
  compute = jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32
  model = create_model(name, num_classes=spec['num_classes'], dtype=compute)
  shape = (image_size, image_size, spec['in_channels'])
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
  labels = rng.integers(0, spec['num_classes'], (batch,), dtype=np.int32)
  key = jax.random.key(0)
  if mode == 'infer':
    variables = jax.jit(functools.partial(initial_variables, model, image_shape=shape))(key)
    x = jax.device_put(normalize(images, (127.5,), (127.5,), compute))
    forward = jax.jit(functools.partial(model.apply, train=False, rngs={'fmp': key}))
    compiled = forward.lower(variables, x).compile()
    flops, peak = compiled_costs(compiled)
    return Timed(lambda: forward(variables, x), jax.block_until_ready, flops, peak, compiled)
  # torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4), the peer's optimizer.
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
  parallel = DataParallel('shard_map', devices=jax.devices()[:1])
  # Made in the layout the step returns it in: else the second call compiles the step again.
  state = parallel.replicated_init(
      functools.partial(create_train_state, model, tx, image_shape=shape), key)
  step = parallel.map(functools.partial(train_step, mean=(127.5,), std=(127.5,), dtype=compute),
                      ('state', 'batch', 'const'), donate_state=True)
  data = parallel.shard_batch({'image': images, 'label': labels})
  compiled = step.lower(state, data, key).compile()
  flops, peak = compiled_costs(compiled)
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], data, key)
    return metrics
  return Timed(run, jax.block_until_ready, flops, peak, compiled)


def torch_device():
  """torch's GPU when it has one, else the CPU, and a `sync(_)` that waits for its work (a Timed
  sync)."""
  import torch
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')

  def sync(_):
    if device.type == 'cuda':
      torch.cuda.synchronize()
  return device, sync


def torch_step(name: str, batch: int, image_size: int, dtype: str, mode: str,
               compile_model: bool = False, compile_backend: str = 'inductor') -> Timed:
  """The torch twin's training step (SGD, cross-entropy) or eval forward, channels-last;
  `compile_model`: the model through torch.compile (with `compile_backend`)."""
  import torch

  from resnet_jax.torch_peers import torch_peer
  spec = model_spec(name)
  device, sync = torch_device()
  model = torch_peer(name, spec['num_classes']).to(device, memory_format=torch.channels_last)
  x = torch.randn(batch, spec['in_channels'], image_size, image_size, device=device)
  x = x.contiguous(memory_format=torch.channels_last)
  y = torch.randint(0, spec['num_classes'], (batch,), device=device)
  forward = torch.compile(model, backend=compile_backend) if compile_model else model
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
  """One table row: parameters, FLOPs and peak bytes of our compiled step, steps/s, images/s and
  MFU against `peak_flops`; with `vs_torch`, the twin's images/s and our speed as a multiple
  of its."""
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
