"""`--profile`: where the time of our step goes. A few steps traced with `jax.profiler`, the
trace's events of the compiled program's instructions summed by kind, and the largest single
instructions with the JAX op each was lowered from (read from the compiled HLO text)."""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import tempfile

import jax

from resnet_jax.bench.step import jax_step, time_alternating
from resnet_jax.models import model_spec

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
