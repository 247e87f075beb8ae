"""Weight import from torchvision/timm state dicts, by name.

A model's flax parameter path, module names joined with '.', is the torch module path of its twin
(flax names may contain dots: `nn.Conv(name='features.0')`); the leaves map generically:

  Conv/Dense kernel <- PATH.weight   (OIHW -> HWIO; (out, in) -> (in, out); a 1x1 conv into a Dense)
  bias              <- PATH.bias
  Norm scale        <- PATH.weight
  batch_stats mean  <- PATH.running_mean,  var <- PATH.running_var   (num_batches_tracked: unused)

Families whose flax names predate this (the ResNets) have a renaming function below, chosen by
the twin the registry declares for the model (`model_spec(name)['torch_twin']`).

  python -m resnet_jax.convert --model resnet50 --weights FILE(.pth|.safetensors) --out DIR

writes an orbax checkpoint of {'params', 'batch_stats'} that `config.init_from=DIR` loads.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resnet_jax.models import abstract_variables, create_model, model_spec

_LEAVES = {('params', 'kernel'): 'weight', ('params', 'scale'): 'weight',
           ('params', 'bias'): 'bias', ('batch_stats', 'mean'): 'running_mean',
           ('batch_stats', 'var'): 'running_var'}
_UNUSED_TORCH_LEAVES = ('num_batches_tracked',)


def _resnet_v1(path: str) -> str:
  """Our ResNet v1 names -> torchvision's (conv1, bn1, layerN.M.*, downsample.0/1, fc)."""
  path = re.sub(r'^stem_conv', 'conv1', path)
  path = re.sub(r'^stem_bn', 'bn1', path)
  path = re.sub(r'stage(\d+)_block(\d+)', lambda m: f'layer{int(m[1]) + 1}.{m[2]}', path)
  path = path.replace('proj_conv', 'downsample.0').replace('proj_bn', 'downsample.1')
  return re.sub(r'^head', 'fc', path)


def _resnet_v2(path: str) -> str:
  """Our pre-activation names -> timm ResNetV2's (stem.conv, stages.N.blocks.M.*, norm, head.fc)."""
  path = re.sub(r'^stem_conv', 'stem.conv', path)
  path = re.sub(r'stage(\d+)_block(\d+)', r'stages.\1.blocks.\2', path)
  path = path.replace('proj_conv', 'downsample.conv')
  path = re.sub(r'^final_norm', 'norm', path)
  return re.sub(r'^head', 'head.fc', path)


# Twins whose module names are not ours, by the start of their registered `torch_twin`.
_RENAMES = (('torchvision resnet', _resnet_v1), ('timm resnetv2_', _resnet_v2))


def _torch_module_path(model_name: str) -> Callable[[str], str]:
  twin = model_spec(model_name)['torch_twin'] or ''
  return next((rename for prefix, rename in _RENAMES if twin.startswith(prefix)),
              lambda path: path)


def _to_numpy(value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # A torch tensor, without importing torch here.
    value = value.detach().cpu().float().numpy() if value.is_floating_point() else value.numpy()
  return np.asarray(value)


def _transform(array: np.ndarray, shape: tuple[int, ...], leaf: str) -> np.ndarray:
  """A torch tensor laid out as the flax leaf of `shape` (or unchanged if no rule applies)."""
  if leaf == 'kernel' and array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO.
    if len(shape) == 2 and array.shape[:2] == (1, 1):
      array = array[0, 0]  # A 1x1 convolution classifier loaded into a Dense layer.
  elif leaf == 'kernel' and array.ndim == 2:
    array = array.T
  return array


def from_torch(model_name: str, state_dict: Mapping[str, Any], *,
               num_classes: int | None = None, **overrides) -> dict:
  """Variables ({'params', 'batch_stats'}) of `create_model(model_name, ...)` from a torch twin.

  Every flax leaf must be found and every torch tensor used, with equal shapes after the layout
  transposes; otherwise a ValueError names the tensor and both shapes. `num_classes` defaults to
  the registered one (1000 for the ImageNet models).
  """
  state = {k: v for k, v in state_dict.items() if not k.endswith(_UNUSED_TORCH_LEAVES)}
  spec = model_spec(model_name)
  if num_classes is None:
    num_classes = spec['num_classes']
  model = create_model(model_name, num_classes=num_classes, **overrides)
  # Shapes only: nothing is initialised.
  target = abstract_variables(model, (spec['input_size'], spec['input_size'], spec['in_channels']))
  rename = _torch_module_path(model_name)
  used, out = set(), {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]:
    names = [k.key for k in path]
    collection, leaf_name = names[0], names[-1]
    module = rename('.'.join(names[1:-1]))
    key = f'{module}.{_LEAVES[(collection, leaf_name)]}'
    flax_name = '/'.join(names)
    if key not in state:
      raise ValueError(f'{model_name}: the torch state dict has no {key!r} for {flax_name} '
                       f'(shape {tuple(leaf.shape)})')
    array = _transform(_to_numpy(state[key]), leaf.shape, leaf_name)
    if array.shape != tuple(leaf.shape):
      raise ValueError(f'{model_name}: torch {key!r} has shape {tuple(_to_numpy(state[key]).shape)}'
                       f' (as {array.shape} after transposing) but {flax_name} needs '
                       f'{tuple(leaf.shape)}')
    used.add(key)
    node = out.setdefault(collection, {})
    for name in names[1:-1]:
      node = node.setdefault(name, {})
    node[leaf_name] = jnp.asarray(array, leaf.dtype)
  unused = [k for k in state if k not in used]
  if unused:
    raise ValueError(f'{model_name}: {len(unused)} torch tensors have no place in the model, e.g. '
                     f'{unused[0]!r} with shape {tuple(_to_numpy(state[unused[0]]).shape)}')
  return {'params': out.get('params', {}), 'batch_stats': out.get('batch_stats', {})}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A torch state dict from a .safetensors file (no torch needed) or a .pth/.pt file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--weights {path}: no such file')
  if path.endswith('.safetensors'):
    from safetensors.numpy import load_file
    return load_file(path)
  if path.endswith(('.pth', '.pt', '.bin')):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f'--weights {path}: reading .pth files needs torch: '
                        "pip install -e '.[torch]' (or convert it to .safetensors)") from e
    state = torch.load(path, map_location='cpu', weights_only=True)  # Never unpickles code.
    state = state.get('state_dict', state) if isinstance(state, dict) else state
    return {k: _to_numpy(v) for k, v in state.items()}
  raise ValueError(f'--weights {path}: expected a .safetensors, .pth or .pt file')


def save_variables(variables: dict, out_dir: str) -> None:
  """An orbax checkpoint of {'params', 'batch_stats'} at `out_dir` (for config.init_from)."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(out_dir) if '://' not in out_dir else out_dir
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=True)


def load_variables(path: str) -> dict:
  """The {'params', 'batch_stats'} of a converted checkpoint or of a training workdir's latest."""
  import orbax.checkpoint as ocp

  from resnet_jax import checkpoint
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    state = checkpoint.load_state_tree(path)
    return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}
  with ocp.PyTreeCheckpointer() as reader:
    metadata = reader.metadata(os.path.abspath(path))
    tree = metadata.item_metadata.tree if hasattr(metadata, 'item_metadata') else metadata
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    restored = reader.restore(os.path.abspath(path), restore_args=as_numpy)
  return {'params': restored['params'], 'batch_stats': restored.get('batch_stats', {})}


def with_pretrained(state, path: str):
  """`config.init_from`: a train state (one host copy) with the params and BN statistics of a
  converted or trained checkpoint at `path`; the optimizer state starts afresh.

  Leaves whose shape differs only in the last axis (the classifier, when `num_classes` differs)
  keep their fresh initialisation; any other difference is an error naming the leaf.
  """
  loaded = load_variables(path)
  fresh_head = []

  def pick(key_path, fresh, saved):
    name = jax.tree_util.keystr(key_path)
    if saved is None:
      raise ValueError(f'config.init_from {path}: it has no {name}')
    if saved.shape == fresh.shape:
      return np.asarray(saved, fresh.dtype)
    if saved.shape[:-1] == fresh.shape[:-1]:
      fresh_head.append(name)
      return fresh
    raise ValueError(f'config.init_from {path}: {name} has shape {saved.shape} there and '
                     f'{fresh.shape} here')

  def merge(fresh_tree, saved_tree):
    saved_flat = {jax.tree_util.keystr(k): v
                  for k, v in jax.tree_util.tree_flatten_with_path(saved_tree)[0]}
    return jax.tree_util.tree_map_with_path(
        lambda k, f: pick(k, f, saved_flat.get(jax.tree_util.keystr(k))), fresh_tree)

  params = merge(state.params, loaded['params'])
  batch_stats = merge(state.batch_stats, loaded['batch_stats'])
  if fresh_head:
    logging.info('init_from %s: a new classifier (%s), the rest loaded.', path,
                 ', '.join(fresh_head))
  ema = {'params': params, 'batch_stats': batch_stats} if state.ema else state.ema
  return state.replace(params=params, batch_stats=batch_stats, ema=ema,
                       opt_state=state.tx.init(params))


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, help='a registered model name, e.g. resnet50')
  parser.add_argument('--weights', required=True, help='a torch state dict: .safetensors or .pth')
  parser.add_argument('--out', required=True, help='directory for the orbax checkpoint')
  parser.add_argument('--num-classes', type=int, default=None,
                      help="the weights' class count (default: the registered model's)")
  args = parser.parse_args(argv)
  variables = from_torch(args.model, load_state_dict(args.weights), num_classes=args.num_classes)
  save_variables(variables, args.out)
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  print(f'{args.model}: {count:,} parameters from {args.weights} -> {args.out}')


if __name__ == '__main__':
  main()
