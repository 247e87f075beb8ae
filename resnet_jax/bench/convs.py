"""`--convs`: each distinct convolution of a model timed on its own (forward, input gradient,
weight gradient), torch's alongside, and what one training step spends in them. XLA:CPU runs
convolutions on its thread pool outside the trace that `--profile` reads: this is where it sees.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

from resnet_jax.bench.step import Timed, time_alternating, torch_device
from resnet_jax.models import abstract_variables, create_model, model_spec
from resnet_jax.steps import RNG_STREAMS


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
  variables = abstract_variables(model, x.shape[1:])
  key = jax.random.key(0)
  apply = functools.partial(model.apply, train=True, mutable=['batch_stats'],
                            rngs={stream: key for stream in RNG_STREAMS})
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
  device, sync = torch_device()

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
