"""resnet_jax: the classic image-classification CNNs and their training techniques in JAX/Flax.

  resnet_jax.run(config, workdir)     trains and evaluates (train.train_and_evaluate)
  resnet_jax.load_run(workdir)        model, variables, config of a trained run (predict.load_run)

Importing the package has no side effects and imports no JAX: those two load their modules when
first used; the entry points set XLA's CPU defaults (`resnet_jax.xla_flags`).
"""
import importlib

# name -> (module, attribute), imported on first use (PEP 562).
_LAZY = {'run': ('resnet_jax.train', 'train_and_evaluate'),
         'load_run': ('resnet_jax.predict', 'load_run')}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attribute = _LAZY[name]
  return getattr(importlib.import_module(module), attribute)


def __dir__() -> list[str]:
  return sorted([*globals(), *_LAZY])
