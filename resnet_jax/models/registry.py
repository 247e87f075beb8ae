"""Model registry: each variant is one `register(...)` line binding arguments to a module class,
with its metadata beside it (as timm's default_cfgs): input size and channels, class count, the
classifier's path in `params`, the torch twin and the parameter count the paper or twin reports.
This is the one place that metadata is kept; convert.py, torch_peers.py and the benchmark read it.

`create_model`, `list_models`, `model_spec`, `count_params`, `feature_info`, `initial_variables`,
`abstract_variables` and `forward_flops` are the public face of `resnet_jax.models`.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models import layers


@dataclasses.dataclass(frozen=True)
class _Entry:
  module: type[nn.Module]
  kwargs: dict[str, Any]
  input_size: int
  in_channels: int
  num_classes: int
  classifier: str  # The classifier's module path in `params`, '/'-joined ('head', 'body/output').
  torch_twin: str | None = None  # 'torchvision resnet18', 'timm legacy_xception' (torch_peers).
  paper_params: int | None = None  # The parameter count the paper (or the twin) reports.


_REGISTRY: dict[str, _Entry] = {}


def _module_fields(module: type[nn.Module]) -> set[str]:
  """Constructor arguments of a linen module dataclass, less linen's own `parent` and `name`."""
  return {f.name for f in dataclasses.fields(module) if f.init} - {'parent', 'name'}


def register(
    name: str,
    module: type[nn.Module],
    *,
    input_size: int,
    in_channels: int = 3,
    num_classes: int = 1000,
    classifier: str,
    torch_twin: str | None = None,
    paper_params: int | None = None,
    **kwargs: Any,
) -> None:
  """Registers `name` as `module(**kwargs)`.

  `input_size` (side of the square input), `in_channels` and `num_classes` describe the data the
  paper used; they go into `model_spec`, and `num_classes` is also the default of `count_params`.
  `create_model` always takes `num_classes` explicitly.

  `classifier`: the module whose kernel gives the logits, as its '/'-joined path in `params`
  (its kernel's last axis is num_classes; the tests check it for every model).
  `torch_twin`: '<library> <constructor>' of the torch model whose logits ours equal after
  `convert.from_torch` ('torchvision resnet18', 'timm legacy_xception',
  'resnet_jax.torch_peers CifarResNet'), or None. `paper_params`: the parameter count the paper
  or the twin reports, at `num_classes`; a count the paper rounds is given with its zeros
  (0.27M: 270_000) and matched at that precision.
  """
  if name in _REGISTRY:
    raise ValueError(f'model {name!r} is already registered')
  unknown = sorted(set(kwargs) - _module_fields(module))
  if unknown:
    raise TypeError(f'register({name!r}): {module.__name__} has no argument {", ".join(unknown)}')
  if torch_twin is not None and len(torch_twin.split()) != 2:
    raise ValueError(f"register({name!r}): torch_twin {torch_twin!r} is not '<library> <name>'")
  _REGISTRY[name] = _Entry(module, dict(kwargs), input_size, in_channels, num_classes,
                           classifier, torch_twin, paper_params)


def _entry(name: str) -> _Entry:
  try:
    return _REGISTRY[name]
  except KeyError:
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=5, cutoff=0.5)
    hint = f'did you mean: {", ".join(close)}? ' if close else ''
    valid = ', '.join(list_models())
    raise ValueError(f'unknown model {name!r}; {hint}valid: {valid}') from None


def list_models() -> list[str]:
  """All registered model names, sorted."""
  return sorted(_REGISTRY)


def model_spec(name: str) -> dict[str, Any]:
  """What a registered model expects (input_size, in_channels, num_classes), what it binds, and
  its metadata (classifier, torch_twin, paper_params; see `register`)."""
  entry = _entry(name)
  return {
      'name': name,
      'module': entry.module.__name__,
      'input_size': entry.input_size,
      'in_channels': entry.in_channels,
      'num_classes': entry.num_classes,
      'classifier': entry.classifier,
      'torch_twin': entry.torch_twin,
      'paper_params': entry.paper_params,
      'kwargs': dict(entry.kwargs),
  }


def create_model(
    name: str,
    *,
    num_classes: int,
    dtype: Any = jnp.float32,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **overrides: Any,
) -> nn.Module | FeatureExtractor:
  """Builds the registered model `name`; `overrides` replace (or add to) its bound arguments.

  `dtype` is the computation dtype; parameters stay float32. An override that is not an argument
  of the module is a TypeError naming it. `num_classes=0` builds the net without its classifier:
  it returns the pooled features the classifier would read ([N, D]).

  `features_only=True` returns a `FeatureExtractor`: the feature maps at the ends of the stages
  `out_indices` (indices into `feature_info(name)`, negative from the end; None: all), with no
  head and no head parameters.
  """
  entry = _entry(name)
  fields = _module_fields(entry.module)
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise TypeError(
        f'unknown override {", ".join(map(repr, unknown))} for model {name!r} '
        f'({entry.module.__name__}); valid: {", ".join(sorted(fields))}'
    )
  if num_classes < 0:
    raise ValueError(f'num_classes must be >= 0 (0: no classifier), got {num_classes}')
  kwargs = {**entry.kwargs, **overrides, 'num_classes': num_classes, 'dtype': dtype}
  model = entry.module(**kwargs)
  if not features_only:
    if out_indices is not None:
      raise ValueError('out_indices picks feature maps: pass it with features_only=True')
    return model
  info = feature_info(name, **overrides)
  if not info:
    raise ValueError(f'model {name!r} has no stages to take feature maps from '
                     f'(features_only=True); forward_features gives its last features')
  count = len(info)
  indices = tuple(range(count)) if out_indices is None else tuple(out_indices)
  bad = [i for i in indices if not -count <= i < count]
  if bad or not indices:
    raise ValueError(f'out_indices {indices} for model {name!r}: it has {count} stages, '
                     f'valid indices are {-count}..{count - 1}')
  return FeatureExtractor(model, tuple(i % count for i in indices))


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
  """A zoo model cut after its backbone that returns the feature maps at the ends of the stages
  `out_indices` (timm's features_only), for detection or segmentation heads, probes and CAMs.

  `init` / `apply` take what the model's do. `init` makes no head parameters; `apply` also
  takes the whole net's variables (the head's are left unused). With `train=True` pass
  `mutable=['batch_stats']` and get `(maps, updated_state)` back, as from the model.
  """

  model: nn.Module
  out_indices: tuple[int, ...]

  def init(self, rngs: Any, x: jax.Array, *, train: bool = False) -> dict:
    return self.model.init(rngs, x, train=train, part='features')

  def apply(self, variables: dict, x: jax.Array, *, train: bool = False,
            mutable: Sequence[str] | bool = False, rngs: Any = None
            ) -> list[jax.Array] | tuple[list[jax.Array], dict]:
    extra = [mutable] if isinstance(mutable, str) else list(mutable or [])
    _, state = self.model.apply(variables, x, train=train, part='features', rngs=rngs,
                                mutable=['intermediates', *extra])
    stages = state.pop('intermediates')[layers.FEATURES]
    maps = [stages[i] for i in self.out_indices]
    return (maps, state) if mutable else maps


@functools.lru_cache(maxsize=256)
def _feature_info_cached(name: str, overrides: tuple[tuple[str, Any], ...]
                         ) -> tuple[dict[str, int], ...]:
  entry = _entry(name)
  model = create_model(name, num_classes=entry.num_classes, **dict(overrides))
  shape = (1, entry.input_size, entry.input_size, entry.in_channels)

  def stage_maps(variables, x):
    _, state = model.apply(variables, x, train=False, part='features',
                           rngs={'fmp': jax.random.key(0)}, mutable=['intermediates'])
    return state['intermediates'].get(layers.FEATURES, ())

  variables = abstract_variables(model, shape[1:])
  # The reduction is the stride: how many input pixels one map pixel advances per. Measured
  # as the growth of each map when the input grows by `grow` (unpadded convolutions trim a few
  # pixels at every size: 299 -> 19 is stride 16, not 299 // 19 = 15).
  grow = 288  # 9 * 32: a whole number of pixels at strides 2..32 and OverFeat's 36

  def maps_at(size):
    x = jax.ShapeDtypeStruct((1, size, size, entry.in_channels), jnp.float32)
    return jax.eval_shape(stage_maps, variables, x)

  maps = maps_at(entry.input_size)
  if not maps:  # no stages (an MLP, whose input size is fixed besides)
    return ()
  bigger = maps_at(entry.input_size + grow)
  return tuple({'index': i, 'channels': m.shape[-1],
                'reduction': round(grow / (b.shape[1] - m.shape[1]))}
               for i, (m, b) in enumerate(zip(maps, bigger)))


def feature_info(name: str, **overrides: Any) -> list[dict[str, int]]:
  """The stages a registered model's `features_only` maps come from, in order: each one's
  `index`, `channels` and `reduction` (its stride in input pixels; timm's feature_info). Empty
  for a net without stages (an MLP). Read from shapes, cached."""
  return [dict(d) for d in _feature_info_cached(name, tuple(sorted(overrides.items())))]


@functools.lru_cache(maxsize=256)
def _count_params_cached(name: str, num_classes: int, overrides: tuple[tuple[str, Any], ...]):
  return _count_params(name, num_classes, dict(overrides))


def _count_params(name: str, num_classes: int, overrides: dict[str, Any]) -> int:
  entry = _entry(name)
  if 'scan_blocks' in _module_fields(entry.module):
    # Same parameter count, but the trace costs O(stages) instead of O(depth).
    overrides = {'scan_blocks': True, **overrides}
  model = create_model(name, num_classes=num_classes, **overrides)
  # Shapes only: abstract evaluation allocates nothing and runs no convolution.
  variables = abstract_variables(model, (entry.input_size, entry.input_size, entry.in_channels))
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(variables['params']))


def count_params(name: str, num_classes: int | None = None, **overrides: Any) -> int:
  """Number of trainable parameters (the `params` collection only) of a registered model.

  Computed from shapes (`abstract_variables`), never by initializing. Modules with a `scan_blocks`
  field are traced with it on (identical count, a far shorter trace for 1000-layer nets). Results
  are cached. `num_classes` defaults to the class count in `model_spec(name)`.
  """
  if num_classes is None:
    num_classes = _entry(name).num_classes
  key = tuple(sorted(overrides.items()))
  try:
    hash(key)
  except TypeError:  # an unhashable override value (a list, say) cannot be a cache key
    return _count_params(name, num_classes, overrides)
  return _count_params_cached(name, num_classes, key)


def initial_variables(model: nn.Module, rng: jax.Array, image_shape: tuple[int, ...]) -> dict:
  """{'params', 'batch_stats'} of a freshly initialised `model` for [H, W, C] images (fp32).

  An 'fmp' key too: fractional max pooling draws its regions in evaluation mode as well. No
  'dropout' or 'drop_path' key: every model draws those only in training (train=True).
  """
  rngs = {'params': rng, 'fmp': jax.random.fold_in(rng, 1)}
  variables = model.init(rngs, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}


def abstract_variables(model: nn.Module, image_shape: tuple[int, ...]) -> dict:
  """`initial_variables`' shapes and dtypes (jax.ShapeDtypeStruct leaves), computing nothing."""
  return jax.eval_shape(functools.partial(initial_variables, model, image_shape=image_shape),
                        jax.random.key(0))


def forward_flops(model: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1,
                  compiled: bool = True, variables: dict | None = None) -> float | None:
  """FLOPs of `model`'s eval-mode forward pass on `batch` [H, W, C] images, from XLA's cost
  analysis of the jitted apply on abstract variables: no weights made, nothing run.

  `compiled=False` reads the lowered program's analysis, before optimization: cheap, for nets
  XLA takes minutes to compile unrolled (on cifar_resnet110 it reads 5% below the compiled
  count). None when the backend reports no FLOPs. `variables`: the model's abstract variables
  when the caller has them (tracing a deep net takes a while), else traced here.
  """
  if variables is None:
    variables = abstract_variables(model, input_shape)
  x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
  # Fractional max pooling nets draw their pooling regions from the `fmp` stream, at eval too.
  apply = functools.partial(model.apply, train=False, rngs={'fmp': jax.random.key(0)})
  lowered = jax.jit(apply).lower(variables, x)
  cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one analysis per program.
    cost = cost[0] if cost else None
  return float(cost['flops']) if cost and 'flops' in cost else None
