"""Weight import from torchvision/timm state dicts, by name.

A model's flax parameter path, module names joined with '.', is the torch module path of its twin
(flax names may contain dots: `nn.Conv(name='features.0')`); the leaves map generically:

  Conv/Dense kernel <- PATH.weight   (OIHW -> HWIO; (out, in) -> (in, out); a 1x1 conv into a Dense)
  bias              <- PATH.bias
  Norm scale        <- PATH.weight
  batch_stats mean  <- PATH.running_mean,  var <- PATH.running_var   (num_batches_tracked: unused)

Families whose flax names predate this (the ResNets) have a renaming function below, chosen by
the twin the registry declares for the model (`model_spec(name)['torch_twin']`).

  python -m resnet_jax.convert --model resnet50 --weights FILE(.pth|.safetensors) --out DIR \\
      [--source torchvision:IMAGENET1K_V1 | timm:TAG] [--mean ...] [--class-names FILE] ...

writes an orbax checkpoint of {'params', 'batch_stats'} that `config.init_from=DIR` loads, and
beside it DIR/pretrained_cfg.json: what the weights expect (timm's pretrained_cfg): source, mean
and std (0..1 scale), input size, crop fraction, interpolation, class names, the weights' license.
Its defaults come from the twin library's own record of the weights (torchvision's weight enums,
timm's pretrained cfgs), read offline; flags override any field.

`create_model(name, weights=PATH)` returns the model, its variables and that cfg, from a converted
DIR or straight from a torch state dict; `predict --weights=PATH` preprocesses as the cfg says.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from resnet_jax import models
from resnet_jax.models import abstract_variables, model_spec

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
  model = models.create_model(model_name, num_classes=num_classes, **overrides)
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


def save_variables(variables: dict, out_dir: str, pretrained_cfg: dict | None = None) -> None:
  """An orbax checkpoint of {'params', 'batch_stats'} at `out_dir` (for config.init_from), with
  `pretrained_cfg` written beside it as PRETRAINED_CFG when given."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(out_dir) if '://' not in out_dir else out_dir
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, variables, force=True)
  if pretrained_cfg is not None:
    check_pretrained_cfg(pretrained_cfg, out_dir)
    with open(os.path.join(path, PRETRAINED_CFG), 'w') as f:
      json.dump(pretrained_cfg, f, indent=1)


# ---------------------------------------------------------------------------------------------
# Pretrained configs: what converted weights expect of their input (timm's pretrained_cfg).

PRETRAINED_CFG = 'pretrained_cfg.json'
CFG_FIELDS = ('model', 'source', 'num_classes', 'input_size', 'mean', 'std', 'crop_fraction',
              'interpolation', 'class_names', 'license')
INTERPOLATIONS = ('bilinear', 'bicubic', 'nearest')
# torchvision's weights carry no license field; its docs put them under the BSD-3-Clause
# license of the library, the ImageNet terms of access applying to the data they came from.
_TORCHVISION_LICENSE = 'bsd-3-clause (torchvision; trained on ImageNet, see its terms of access)'


def check_pretrained_cfg(cfg: Mapping[str, Any], where: str) -> None:
  """A ValueError naming the field of `cfg` (from `where`) that is missing or not valid."""
  missing = [k for k in CFG_FIELDS if k not in cfg]
  if missing:
    raise ValueError(f'{where}: pretrained_cfg lacks {", ".join(missing)} '
                     f'(fields: {", ".join(CFG_FIELDS)})')
  channels = cfg['input_size'][0]
  for key in ('mean', 'std'):
    if len(cfg[key]) not in (1, channels) or (key == 'std' and min(cfg[key]) <= 0):
      raise ValueError(f'{where}: pretrained_cfg {key} {cfg[key]} is not 1 or {channels} '
                       f'values (0..1 scale){", all > 0" if key == "std" else ""}')
  if not 0 < cfg['crop_fraction'] <= 1:
    raise ValueError(f'{where}: pretrained_cfg crop_fraction {cfg["crop_fraction"]} is not in '
                     f'(0, 1]')
  if cfg['interpolation'] not in INTERPOLATIONS:
    raise ValueError(f'{where}: pretrained_cfg interpolation {cfg["interpolation"]!r}; valid: '
                     f'{", ".join(INTERPOLATIONS)}')
  if cfg['class_names'] and len(cfg['class_names']) != cfg['num_classes']:
    raise ValueError(f'{where}: pretrained_cfg names {len(cfg["class_names"])} classes for '
                     f'num_classes {cfg["num_classes"]}')


def twin_pretrained_cfg(model_name: str, source: str | None = None) -> dict[str, Any]:
  """The pretrained_cfg of the twin library's weights for `model_name`, read from the library
  (no download): `source` is 'torchvision:ENUM' (e.g. 'torchvision:IMAGENET1K_V1'; default the
  library's DEFAULT weights) or 'timm:TAG' (e.g. 'timm:a1h_in1k'; default timm's default tag).
  A model whose twin is neither gets a cfg of its registered input size and no normalisation:
  give the rest with `convert --mean/--std/...`."""
  spec = model_spec(model_name)
  library, _, twin = (spec['torch_twin'] or ' ').partition(' ')
  kind, _, tag = (source or f'{library}:').partition(':')
  if source and kind != library:
    raise ValueError(f'--source {source}: the twin of {model_name} is {spec["torch_twin"]}; '
                     f'give {library}:TAG or leave --source out')
  cfg = {'model': model_name, 'num_classes': spec['num_classes'],
         'input_size': [spec['in_channels'], spec['input_size'], spec['input_size']],
         'mean': [0.0], 'std': [1.0 / 255], 'crop_fraction': 1.0, 'interpolation': 'bilinear',
         'class_names': [], 'license': 'unknown', 'source': source or 'unknown'}
  if library == 'torchvision':
    import torchvision
    enum = torchvision.models.get_model_weights(twin)
    weights = enum[tag] if tag else enum.DEFAULT
    view = weights.transforms()
    crop, resize = view.crop_size[0], view.resize_size[0]
    cfg.update(source=f'torchvision:{weights}', mean=list(view.mean), std=list(view.std),
               input_size=[spec['in_channels'], crop, crop], crop_fraction=crop / resize,
               interpolation=view.interpolation.value, class_names=list(weights.meta['categories']),
               license=_TORCHVISION_LICENSE)
  elif library == 'timm':
    import timm
    from timm.data import ImageNetInfo, infer_imagenet_subset
    theirs = timm.get_pretrained_cfg(f'{twin}.{tag}' if tag else twin)
    if theirs is None:
      raise ValueError(f'--source {source}: timm has no pretrained cfg {twin}.{tag}')
    subset = infer_imagenet_subset(theirs)
    names = ImageNetInfo(subset).label_descriptions() if subset else []
    cfg.update(source=f'timm:{theirs.architecture}.{theirs.tag}', mean=list(theirs.mean),
               std=list(theirs.std), input_size=list(theirs.input_size),
               crop_fraction=theirs.crop_pct, interpolation=theirs.interpolation,
               class_names=list(names), license=theirs.license or 'unknown',
               num_classes=theirs.num_classes)
  return cfg


def load_pretrained_cfg(path: str) -> dict[str, Any] | None:
  """PATH/pretrained_cfg.json (checked), or None when the checkpoint at `path` has none."""
  file = os.path.join(path, PRETRAINED_CFG)
  if not os.path.isfile(file):
    return None
  with open(file) as f:
    cfg = json.load(f)
  check_pretrained_cfg(cfg, file)
  return cfg


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
  """`create_model(name, weights=PATH)`: unpacks as `model, variables = ...`; `cfg` is the
  weights' pretrained_cfg."""
  model: Any
  variables: dict
  cfg: dict

  def __iter__(self) -> Iterator[Any]:
    return iter((self.model, self.variables))


def create_model(name: str | None = None, *, weights: str, source: str | None = None,
                 **overrides: Any) -> Pretrained:
  """The registered model `name` with converted weights, ready to use.

  `weights`: a directory `convert` wrote (its pretrained_cfg.json is read and must name this
  model; `name` None takes the model it names), or a torch state dict (.safetensors, .pth) of
  the model's twin, converted here, whose cfg is the twin library's (`source` as in
  `twin_pretrained_cfg`). `overrides` go to `models.create_model` (num_classes=0 or
  features_only drop the classifier's weights).
  """
  if os.path.isdir(weights):
    cfg = load_pretrained_cfg(weights)
    if cfg is None:
      raise FileNotFoundError(f'weights {weights}: no {PRETRAINED_CFG}; write one with python -m '
                              'resnet_jax.convert --model NAME --weights FILE --out DIR')
    name = cfg['model'] if name is None else name
    if cfg['model'] != name:
      raise ValueError(f'weights {weights} are {cfg["model"]!r} weights, not {name!r}')
    variables = load_variables(weights)
  elif name is None:
    raise ValueError(f'weights {weights}: a state dict names no model; give the model name, or '
                     'a directory python -m resnet_jax.convert wrote')
  else:
    cfg = twin_pretrained_cfg(name, source)
    variables = from_torch(name, load_state_dict(weights))
    classes = classifier_width(variables['params'], name, f'weights {weights}')
    if classes != cfg['num_classes']:
      raise ValueError(f'weights {weights}: {classes} classes, but '
                       f'{cfg["source"]} has {cfg["num_classes"]}; convert them with '
                       f'python -m resnet_jax.convert, giving their cfg')
  num_classes = overrides.pop('num_classes', cfg['num_classes'])
  model = models.create_model(name, num_classes=num_classes, **overrides)
  return Pretrained(model, variables, cfg)


def classifier_width(params: dict, model_name: str, where: str) -> int:
  """The class count of saved `params`: the last axis of the classifier's kernel (models
  registry: model_spec(name)['classifier'])."""
  path = model_spec(model_name)['classifier']
  node = params
  for part in (*path.split('/'), 'kernel'):
    if not isinstance(node, dict) or part not in node:
      raise ValueError(f'{where} holds no params/{path}/kernel, the classifier of {model_name}: '
                       'it was written for another model')
    node = node[part]
  return int(np.shape(node)[-1])


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


def with_pretrained(state, path: str, dataset: Any = None):
  """`config.init_from`: a train state (one host copy) with the params and BN statistics of a
  converted or trained checkpoint at `path`; the optimizer state starts afresh.

  Leaves whose shape differs only in the last axis (the classifier, when `num_classes` differs)
  keep their fresh initialisation; any other difference is an error naming the leaf. With
  `dataset` (config.dataset), a fixed mean/std other than the weights' pretrained_cfg is
  warned about: features learnt on one normalisation see shifted inputs under another.
  """
  cfg = load_pretrained_cfg(path) if os.path.isdir(path) else None
  if cfg and dataset is not None and dataset.preprocess == 'fixed':
    want = [np.broadcast_to(np.asarray(cfg[k]) * 255, (cfg['input_size'][0],)) for k in
            ('mean', 'std')]
    have = [np.broadcast_to(np.asarray(v, float), (cfg['input_size'][0],))
            for v in (dataset.mean, dataset.std)]
    if not all(np.allclose(a, b, atol=0.5) for a, b in zip(want, have)):
      logging.warning('init_from %s: its weights expect mean %s and std %s (0..255 scale; '
                      '%s), this run normalises with config.dataset.mean=%s, std=%s',
                      path, np.round(want[0], 3).tolist(), np.round(want[1], 3).tolist(),
                      PRETRAINED_CFG, list(dataset.mean), list(dataset.std))
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


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(',')]


def main(argv: Sequence[str] | None = None) -> None:
  import argparse
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, help='a registered model name, e.g. resnet50')
  parser.add_argument('--weights', required=True, help='a torch state dict: .safetensors or .pth')
  parser.add_argument('--out', required=True, help='directory for the orbax checkpoint')
  parser.add_argument('--num-classes', type=int, default=None,
                      help="the weights' class count (default: the registered model's)")
  parser.add_argument('--source', default=None,
                      help="the weights' record in the twin library: torchvision:ENUM "
                           '(IMAGENET1K_V1) or timm:TAG; default: the library default')
  parser.add_argument('--mean', type=_floats, help='per-channel mean, 0..1 scale: 0.5,0.5,0.5')
  parser.add_argument('--std', type=_floats, help='per-channel std, 0..1 scale')
  parser.add_argument('--input-size', type=int, help='the side of the square input')
  parser.add_argument('--crop-fraction', type=float, help='evaluation crop / resized side')
  parser.add_argument('--interpolation', choices=INTERPOLATIONS)
  parser.add_argument('--class-names', help='a text file, one class name per line')
  parser.add_argument('--license', help="the license of the source weights")
  args = parser.parse_args(argv)
  variables = from_torch(args.model, load_state_dict(args.weights), num_classes=args.num_classes)
  cfg = twin_pretrained_cfg(args.model, args.source)
  cfg['num_classes'] = classifier_width(variables['params'], args.model, args.weights)
  if cfg['num_classes'] != len(cfg['class_names']):
    cfg['class_names'] = []  # the library's names are for other weights (another head)
  for key in ('mean', 'std', 'crop_fraction', 'interpolation', 'license'):
    if getattr(args, key) is not None:
      cfg[key] = getattr(args, key)
  if args.input_size:
    cfg['input_size'] = [cfg['input_size'][0], args.input_size, args.input_size]
  if args.class_names:
    with open(args.class_names) as f:
      cfg['class_names'] = [line.strip() for line in f if line.strip()]
  save_variables(variables, args.out, cfg)
  count = sum(x.size for x in jax.tree.leaves(variables['params']))
  print(f'{args.model}: {count:,} parameters from {args.weights} -> {args.out} '
        f'({PRETRAINED_CFG}: {cfg["source"]}, mean {cfg["mean"]}, std {cfg["std"]}, '
        f'{cfg["crop_fraction"]:.3f} crop, {cfg["interpolation"]})')


if __name__ == '__main__':
  main()
