"""OverFeat (Sermanet et al. 2013): parameter counts and feature map sizes of Tables 1, 3, 4 and
5; the fully convolutional head (`fully_conv`) of OverFeat, VGG and AlexNet; the 'dense' eval
mode of resnet_jax.evaluate."""
import functools
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, evaluate
from resnet_jax.config import base_config
from resnet_jax.models import abstract_variables, count_params, create_model, initial_variables
from resnet_jax.models.overfeat import FAST
from resnet_jax.parallel import DataParallel


def _key(seed):
  # unsafe_rbg: on CPU each threefry kernel takes ~1.5 s to compile per shape; values don't matter.
  return jax.random.key(seed, impl='unsafe_rbg')


def _thin(convs, width=4):
  """The same geometry (kernels, strides, padding, pools) with `width` filters per layer."""
  return tuple((width, *rest) for _, *rest in convs)


def _shapes(model, input_shape):
  """{module name: (input shape, output shape)} of every call, by shapes only (eval_shape)."""
  seen = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == '__call__' and context.module.name:
      seen[context.module.name] = (args[0].shape, out.shape)
    return out

  def forward(x):
    with nn.intercept_methods(record):
      return model.init_with_output({'params': jax.random.key(0)}, x, train=False)[0]

  logits = jax.eval_shape(forward, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
  return seen, logits.shape


def test_parameter_counts_are_table_4s():
  # Table 4: 145M (fast) and 144M (accurate), truncated millions of Tables 1 and 3's exact counts.
  fast, accurate = count_params('overfeat_fast'), count_params('overfeat_accurate')
  assert (fast, accurate) == (145_920_872, 144_656_488)
  assert (fast // 10**6, accurate // 10**6) == (145, 144)
  # The first FC layer holds most of them: (6x6x1024) x 3072 and (5x5x1024) x 4096 weights.
  params = abstract_variables(create_model('overfeat_fast', num_classes=1000),
                              (231, 231, 3))['params']
  assert params['fc6']['kernel'].shape == (36_864, 3072)
  assert params['conv1']['kernel'].shape == (11, 11, 3, 96)
  params = abstract_variables(create_model('overfeat_accurate', num_classes=1000),
                              (221, 221, 3))['params']
  assert params['fc7']['kernel'].shape == (25_600, 4096) and sorted(params) == [
      'conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'conv6', 'fc7', 'fc8', 'fc9']


def test_fast_feature_maps_are_table_1s():
  seen, logits = _shapes(create_model('overfeat_fast', num_classes=1000), (231, 231, 3))
  sides = {name: (i[1], o[1]) for name, (i, o) in seen.items()}
  # Table 1, "spatial input size": 231, 24, 12, 12, 12, 6, 1, 1. Its 24 is conv2's output (the
  # 2x2/2 pool of conv1's 56x56 gives conv2 a 28x28 input): 28 - 5 + 1 = 24, pooled to 12.
  assert sides['conv1'] == (231, 56) and sides['conv2'] == (28, 24)
  assert sides['conv3'] == sides['conv4'] == sides['conv5'] == (12, 12)
  assert seen['fc6'][0] == (1, 6, 6, 1024) and seen['fc6'][1] == (1, 3072)
  assert seen['fc7'][1] == (1, 4096) and logits == (1, 1000)
  assert [seen[f'conv{i}'][1][-1] for i in range(1, 6)] == [96, 256, 512, 1024, 1024]
  # Table 3 (accurate): 221, 36, 15, 15, 15, 15, 5, 1, 1.
  seen, _ = _shapes(create_model('overfeat_accurate', num_classes=1000), (221, 221, 3))
  assert [seen[f'conv{i}'][0][1] for i in range(1, 7)] == [221, 36, 15, 15, 15, 15]
  assert seen['fc7'][0] == (1, 5, 5, 1024)


def test_accurate_class_maps_are_table_5s():
  """Sermanet et al. 2013, Table 5: the accurate net's classifier maps (one pooling offset,
  "pre-reshape") at the six test sizes, by shapes only."""
  model = create_model('overfeat_accurate', num_classes=1000, fully_conv=True)
  want = {(245, 245): (1, 1), (281, 317): (2, 3), (317, 389): (3, 5), (389, 461): (5, 7),
          (425, 497): (6, 8), (461, 569): (7, 10)}
  for (height, width), side in want.items():
    seen, logits = _shapes(model, (height, width, 3))
    assert seen['fc9'][1] == (1, *side, 1000) and logits == (1, 1000), (height, width)


def _check_fully_conv(name, classifier, size, larger, **overrides):
  """fully_conv at the training size gives the very logits of the flat head with the same
  variables; at a larger size the mean of the class map (of the expected side)."""
  flat = create_model(name, num_classes=7, **overrides)
  dense = flat.clone(fully_conv=True)
  shapes = abstract_variables(flat, (size, size, 3))
  assert jax.tree.structure(abstract_variables(dense, (size, size, 3))) == jax.tree.structure(
      shapes)
  # Random values of those shapes drawn in NumPy: no initialization program to compile.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: np.float32(rng.normal(0, 0.5, a.shape)), shapes)
  class_maps = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.module.name == classifier:
      class_maps[out.shape] = out
    return out

  def forward(model, x):
    with nn.intercept_methods(record):
      return model.apply(variables, x, train=False), class_maps.get((2, larger[1], larger[1], 7))

  x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
  big = jax.random.normal(jax.random.key(2), (2, larger[0], larger[0], 3))
  (want, _), (got, _), (logits, class_map) = jax.jit(lambda x, big: (
      forward(flat, x), forward(dense, x), forward(dense, big)))(x, big)
  scale = float(np.abs(np.asarray(want)).max())
  assert scale > 0
  # The same products and sums; XLA may fuse the two programs' bias adds apart (<= 1 ulp).
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)
  assert class_map is not None and class_map.shape == (2, larger[1], larger[1], 7)
  np.testing.assert_allclose(logits, class_map.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6 * scale)
  assert np.abs(np.asarray(class_map[:, 0, 0] - class_map[:, -1, -1])).max() > 0


def test_fully_conv_overfeat_vgg_alexnet():
  """Thin nets with each family's geometry, at small sizes (the window shrunk with them)."""
  # OverFeat fast (Table 1), 4 filters a layer: 231 - 4x32 = 103 leaves a 2x2 last map, the
  # first FC layer's window; 135 -> 3x3 -> a 2x2 class map.
  _check_fully_conv('overfeat_fast', 'fc8', 103, (135, 2), convs=_thin(FAST), hidden=(8, 8),
                    fc_window=2, kernel_init='kaiming')
  # VGG (Sec. 3.2: at 224 a 7x7 map, the window): here 64 -> 2x2 pooled, 96 -> 3x3 -> 2x2.
  blocks = ((1, 4), (1, 4), (1, 4), (1, 4), (1, 4))
  _check_fully_conv('vgg11', 'classifier.6', 64, (96, 2), blocks=blocks, hidden=8,
                    pooled_size=2)
  # torchvision's AlexNet: 95 -> a 2x2 last map (6x6 at 224); 127 -> 3x3 -> 2x2.
  _check_fully_conv('alexnet', 'classifier.6', 95, (127, 2), widths=(4, 4, 4, 4, 4), hidden=8,
                    pooled_size=2, kernel_init='kaiming')


def test_fully_conv_registered_geometry():
  """The registered window is the last map at the registered size (shapes only): fully_conv runs
  there, and one pixel of stride more gives a 2x2 class map."""
  for name, size, stride in (('overfeat_fast', 231, 32), ('overfeat_accurate', 221, 36),
                             ('vgg16', 224, 32), ('alexnet', 224, 32),
                             ('alexnet_original', 227, 32), ('cifar_vgg16', 32, 32)):
    model = create_model(name, num_classes=7, fully_conv=True)
    seen, logits = _shapes(model, (size + stride, size + stride, 3))
    last = [out for _, out in seen.values() if out[-1] == 7]
    assert last == [(1, 2, 2, 7)] and logits == (1, 7), (name, last)


def test_dense_views_and_scales():
  images = np.random.default_rng(0).integers(0, 256, (2, 30, 40, 3)).astype(np.uint8)
  views = evaluate.dense_views(images, (30, 36), 28)
  assert [v.shape for v in views] == [(2, 30, 30, 3), (2, 36, 36, 3)]
  # Shorter side already 30: only the longer side's excess is cut, centrally.
  np.testing.assert_array_equal(views[0], images[:, :, 5:35])
  packed = evaluate.pack_views(views)
  assert packed.shape == (2, 3 * (30 * 30 + 36 * 36))
  for a, b in zip(evaluate.unpack_views(packed, (30, 36)), views):
    np.testing.assert_array_equal(a, b)
  assert evaluate.default_dense_scales(221) == (245, 281, 317, 389, 425, 461)
  with pytest.raises(ValueError, match='--scales'):
    evaluate.dense_views(images, (24, 30), 28)
  with pytest.raises(ValueError, match='dense_views'):
    evaluate.eval_views(images, 'dense', recipe=evaluate.ViewRecipe(), size=28)


def _digits_config(**fields):
  config = base_config()
  config.update_from_flattened_dict({
      'model.name': 'lenet5', 'dataset.source': 'digits', 'dataset.image_size': 32,
      'dataset.mean': (50.0,), 'dataset.std': (90.0,), 'batch_size': 64, **fields})
  config.dataset.on_device = 'never'
  return config


def test_dense_eval_end_to_end():
  """evaluate_members in mode 'dense' on the digits (8x8, resized): a thin CIFAR VGG, fully
  convolutional, scored at 32 and 48; its rows are predict's softmax averaged over the scales of
  the whole images; a flatten + dense net without the field (LeNet-5) is refused by name."""
  config = _digits_config()
  # What evaluate_members reads of train.setup's Experiment, without its optimizer and state.
  lenet = create_model('lenet5', num_classes=10)
  exp = types.SimpleNamespace(model=lenet, parallel=DataParallel(config.parallelism),
                              eval_split=data.load_split(config.dataset, 'test'),
                              image_shape=(32, 32, 1), eval_key=None)
  model = create_model('cifar_vgg16', num_classes=10,
                       blocks=((1, 4), (1, 4), (1, 4), (1, 4), (1, 8)))
  variables = jax.jit(functools.partial(initial_variables, model, image_shape=(32, 32, 1)))(
      _key(3))
  pre = {'mean': np.float32([50.0]), 'std': np.float32([90.0])}
  scales = (32, 48)
  rows = evaluate.evaluate_members(config, types.SimpleNamespace(**{**vars(exp), 'model': model}),
                                   ['m'], [variables], [pre], 'dense', scales=scales)
  images = np.stack([r['image'] for r in exp.eval_split.records])
  labels = np.array([r['label'] for r in exp.eval_split.records])
  views = evaluate.dense_views(images, scales, 32)
  dense = evaluate.dense_model(model, variables, [(q, q, 1) for q in scales])
  assert dense.fully_conv and not model.fully_conv
  probs = np.asarray(evaluate.predict([variables], dense, views, pre))
  # By hand: the softmax of the dense net at each scale, averaged.
  apply = jax.jit(lambda x: jax.nn.softmax(dense.apply(variables, (x - 50.0) / 90.0, train=False)))
  softmax = [apply(v) for v in views]
  np.testing.assert_allclose(probs, np.mean(softmax, axis=0), rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(softmax[0] - softmax[1])).max() > 1e-4
  member, ensemble = rows
  assert member['eval_mode'] == 'dense' and member['examples'] == len(labels) == 360
  assert member['accuracy'] == pytest.approx(np.mean(probs.argmax(-1) == labels), abs=1e-9)
  assert member['loss'] == pytest.approx(
      -np.mean(np.log(probs[np.arange(len(labels)), labels])), rel=1e-4)
  assert ensemble['loss'] == pytest.approx(member['loss'], rel=1e-6)
  # LeNet-5 flattens its 5x5 maps into a dense layer: it cannot score 48x48 images densely.
  with pytest.raises(ValueError, match='--eval_mode'):
    evaluate.evaluate_members(config, exp, ['lenet'], [abstract_variables(lenet, (32, 32, 1))],
                              [pre], 'dense', scales=scales)
  with pytest.raises(ValueError, match='--scales'):
    evaluate.evaluate_members(config, exp, ['m'], [variables], [pre], 'dense', scales=(24,))
  # A global-average-pool head is dense as it is: the model comes back unchanged.
  nin = create_model('nin', num_classes=10)
  assert evaluate.dense_model(nin, abstract_variables(nin, (224, 224, 3)), [(256, 256, 3)]) is nin


def test_one_sgd_step_on_a_thin_fast_net_lowers_its_loss():
  # Table 1's geometry, 4 filters a layer, at 103x103 (a 2x2 last map); dropout on, as trained.
  model = create_model('overfeat_fast', num_classes=5, convs=_thin(FAST), hidden=(8, 8),
                       fc_window=2, kernel_init='kaiming')
  variables = initial_variables(model, jax.random.key(0), (103, 103, 3))
  x = jax.random.normal(jax.random.key(1), (4, 103, 103, 3))
  y = jnp.array([0, 1, 2, 3])

  def loss(params, train):
    logits = model.apply({'params': params}, x, train=train,
                         rngs={'dropout': jax.random.key(2)})
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), y])

  value, grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(variables['params'], True)
  assert np.isfinite(value) and all(np.abs(g).max() > 0 for g in jax.tree_util.tree_leaves(grads))
  stepped = jax.tree.map(lambda p, g: p - 1e-3 * g, variables['params'], grads)
  assert loss(stepped, True) < value  # The same dropout draw: the step goes downhill.
