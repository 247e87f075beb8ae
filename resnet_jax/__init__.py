"""resnet_jax: the classic image-classification CNNs and their training techniques in JAX/Flax.

Importing the package sets one default for XLA:CPU, before JAX starts its backends (it reads
XLA_FLAGS then, not at `import jax`): convolutions and reductions through XLA's own kernels
rather than YNNPACK's fusions. On a 2-core AMD EPYC (Zen 4, AVX-512; docs/benchmarks.md) that
made the CIFAR ResNet-20 training step 1.2x as fast (0.48x -> 0.57x PyTorch), its inference 1.4x
(0.70x -> 0.95x) and LeNet-5's training 1.65x; ResNet-18 +3% (train) to +13% (infer); only
MobileNet's depthwise convolutions lose (0.84x). An XLA_FLAGS that sets
`--xla_cpu_experimental_ynn_fusion_type` itself is left as it is.
"""
import os
from importlib import metadata

_YNN_FLAG = '--xla_cpu_experimental_ynn_fusion_type'


def _xla_cpu_defaults() -> None:
  flags = os.environ.get('XLA_FLAGS', '')
  if _YNN_FLAG in flags:
    return
  try:
    version = tuple(int(part) for part in metadata.version('jaxlib').split('.')[:2])
  except (metadata.PackageNotFoundError, ValueError):
    return
  # Measured on jaxlib 0.10. XLA aborts the process on a flag it does not know (0.8 lacks this
  # one), so other versions keep XLA's defaults until someone measures them.
  if version == (0, 10):
    os.environ['XLA_FLAGS'] = f'{flags} {_YNN_FLAG}='.strip()


_xla_cpu_defaults()
