"""XLA:CPU's flag defaults, set by the entry points (main, sweep, evaluate, benchmark, the
experiment scripts) before JAX starts its backends: importing the package changes nothing.

Convolutions and reductions go through XLA's own kernels rather than YNNPACK's fusions. On a
2-core AMD EPYC (Zen 4, AVX-512; docs/benchmarks.md) that made the CIFAR ResNet-20 training step
1.2x as fast (0.48x -> 0.57x PyTorch), its inference 1.4x (0.70x -> 0.95x) and LeNet-5's training
1.65x; ResNet-18 +3% (train) to +13% (infer); only MobileNet's depthwise convolutions lose
(0.84x). An XLA_FLAGS that sets `--xla_cpu_experimental_ynn_fusion_type` itself is left as it is.
"""
import os
from importlib import metadata

YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def set_cpu_defaults() -> None:
  """Adds the YNNPACK-off flag to XLA_FLAGS (jaxlib 0.10 only); call before JAX's first use.

  JAX reads XLA_FLAGS when it starts a backend, not at `import jax`, so this may follow the
  import but must precede the first computation.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FLAG in flags:
    return
  try:
    version = tuple(int(part) for part in metadata.version('jaxlib').split('.')[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  # Measured on jaxlib 0.10. XLA aborts the process on a flag it does not know (0.8 lacks this
  # one), so other versions keep XLA's defaults until someone measures them.
  if version == (0, 10):
    os.environ['XLA_FLAGS'] = f'{flags} {YNN_FLAG}='.strip()
