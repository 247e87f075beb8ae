"""AlexNet, VGG, NiN and SqueezeNet: derived parameter counts, torch-exact pooling and LRN, and
the logits of their registered torchvision twins (random weights) imported by name."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn
from twins import randomize_batch_norms

from resnet_jax import convert
from resnet_jax.models import (
    abstract_variables,
    count_params,
    create_model,
    initial_variables,
    model_spec,
)
from resnet_jax.models.alexnet import local_response_norm
from resnet_jax.models.layers import adaptive_avg_pool, max_pool
from resnet_jax.torch_peers import torch_peer


def _key(seed):
  # unsafe_rbg: on CPU each threefry kernel takes ~1.5 s to compile per shape; values don't matter.
  return jax.random.key(seed, impl='unsafe_rbg')


# Models whose paper reports no count and that have no twin (their `paper_params` is None; the
# others' counts are declared at registration and checked in test_models): counts derived layer
# by layer (weights + biases).
DERIVED_COUNTS = {
    # VGG-16 convolutions 14,714,688 (torchvision's vgg16.features) + BN 2x(2x64 + 2x128 + 3x256
    # + 6x512) = 8,448 + linear 512x10+10 = 5,130.
    'cifar_vgg16': 14_728_266,
    # mlpconv1: 96x(11x11x3)+96 + 2x(96x96+96) = 34,944 + 18,624 = 53,568
    # mlpconv2: 256x(5x5x96)+256 + 2x(256x256+256) = 614,656 + 131,584 = 746,240
    # mlpconv3: 384x(3x3x256)+384 + 2x(384x384+384) = 885,120 + 295,680 = 1,180,800
    # mlpconv4: 1000x(3x3x384)+1000 + 2x(1000x1000+1000) = 3,457,000 + 2,002,000 = 5,459,000
    'nin': 7_439_608,
    # Lin et al. 2014, Sec. 4.2, 10 classes:
    # mlpconv1: 192x(5x5x3)+192 + 160x192+160 + 96x160+96 = 14,592 + 30,880 + 15,456 = 60,928
    # mlpconv2: 192x(5x5x96)+192 + 2x(192x192+192) = 460,992 + 74,112 = 535,104
    # mlpconv3: 192x(3x3x192)+192 + 192x192+192 + 10x192+10 = 331,968 + 37,056 + 1,930 = 370,954
    'cifar_nin': 966_986,
}


@pytest.mark.parametrize('name,expected', DERIVED_COUNTS.items())
def test_derived_param_counts(name, expected):
  # count_params traces init + forward at the registered input size (shapes only).
  assert model_spec(name)['paper_params'] is None  # else the registry holds the count
  assert count_params(name) == expected


def test_adaptive_avg_pool_is_torchs():
  rng = np.random.default_rng(0)
  # 13 -> 6: overlapping bins (AlexNet at 224); 1 -> 7: one value repeated (VGG at 32); 3 -> 7:
  # bins of 1 and 2 rows (VGG at 96); 7 -> 7: identity; non-square and shrinking cases.
  for (h, w), out in [((13, 13), (6, 6)), ((1, 1), (7, 7)), ((3, 3), (7, 7)), ((7, 7), (7, 7)),
                      ((13, 5), (6, 3)), ((10, 9), (4, 7))]:
    x = rng.standard_normal((2, h, w, 3)).astype(np.float32)
    theirs = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)), out)
    theirs = theirs.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(adaptive_avg_pool(jnp.asarray(x), out), theirs, rtol=1e-6, atol=1e-6)
    if (h, w) == (1, 1):  # torch replicates a 1x1 map exactly, so a 32x32 VGG input works
      np.testing.assert_array_equal(theirs, np.broadcast_to(x, theirs.shape))


def test_max_pool_is_torchs():
  rng = np.random.default_rng(1)
  for size in (5, 6, 7, 8, 13, 14):
    x = rng.standard_normal((1, size, size + 1, 2)).astype(np.float32)
    # (3, 3, 1) at size 5 with ceil_mode hits torch's rule: no window starts in the padding.
    for window, stride, padding in [(3, 2, 0), (3, 2, 1), (2, 2, 0), (3, 3, 1)]:
      for ceil_mode in (False, True):
        theirs = torch.nn.functional.max_pool2d(
            torch.from_numpy(x.transpose(0, 3, 1, 2)), window, stride, padding,
            ceil_mode=ceil_mode).numpy().transpose(0, 2, 3, 1)
        ours = max_pool(jnp.asarray(x), window, stride, padding, ceil_mode)
        np.testing.assert_array_equal(ours, theirs, err_msg=f'{size} {window} {stride} '
                                      f'{padding} {ceil_mode}')


def test_local_response_norm_is_the_papers():
  x = np.random.default_rng(2).standard_normal((2, 4, 4, 12)).astype(np.float32) * 30
  # Krizhevsky et al. 2012, Sec. 3.3 multiplies the sum by alpha; torch multiplies the mean.
  lrn = tnn.LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0)
  theirs = lrn(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(local_response_norm(jnp.asarray(x)), theirs, rtol=1e-5, atol=1e-6)
  # Channel 0 by hand: its window is channels 0..2 (clipped at the edge).
  sums = (x[..., :3] ** 2).sum(-1)
  np.testing.assert_allclose(local_response_norm(jnp.asarray(x))[..., 0],
                             x[..., 0] / (2 + 1e-4 * sums) ** 0.75, rtol=1e-5)


def randomized(module: torch.nn.Module) -> torch.nn.Module:
  """A twin with random weights, BatchNorm statistics far from the identity, in eval mode."""
  torch.manual_seed(0)
  randomize_batch_norms(module)
  for m in module.modules():
    if isinstance(m, (tnn.Conv2d, tnn.Linear)) and m.bias is not None:
      with torch.no_grad():  # torchvision zeroes VGG's and SqueezeNet's biases: test them too
        m.bias.uniform_(-0.1, 0.1)
  return module.eval()


def relative_differences(name: str, twin: torch.nn.Module, sizes) -> list[float]:
  """max |ours - theirs| / max |theirs| of the logits on a random batch of 2 per input size."""
  batches = [np.random.default_rng(size).standard_normal((2, size, size, 3)).astype(np.float32)
             for size in sizes]
  with torch.no_grad():
    logits = [twin(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy() for x in batches]
  variables = convert.from_torch(name, twin.state_dict())
  model = create_model(name, num_classes=logits[0].shape[-1])
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return [float(np.abs(np.asarray(forward(variables, x)) - theirs).max() / np.abs(theirs).max())
          for x, theirs in zip(batches, logits)]


def test_alexnet_equals_torchvision():
  # 63x63 leaves a 1x1 map (replicated to 6x6); 224x224 a 13x13 map (overlapping 6x6 bins).
  diffs = relative_differences('alexnet', randomized(torch_peer('alexnet')), (63, 224))
  assert max(diffs) < 1e-4, diffs


# 32x32 leaves 1x1 maps after the five pools (replicated to 7x7): every weight, cheaply. vgg11 also
# runs at 96x96 (3x3 maps, 7x7 bins of 1 and 2 rows) to test real adaptive averaging.
@pytest.mark.parametrize('name', ['vgg11', 'vgg13', 'vgg16', 'vgg19',
                                  'vgg11_bn', 'vgg13_bn', 'vgg16_bn', 'vgg19_bn'])
def test_vgg_equals_torchvision(name):
  sizes = (32, 96) if name == 'vgg11' else (32,)
  diffs = relative_differences(name, randomized(torch_peer(name)), sizes)
  assert max(diffs) < 1e-4, diffs


# 65x65 makes every ceil-mode pool of squeezenet1_1 (and the first of 1_0) keep a partial window.
@pytest.mark.parametrize('name', ['squeezenet1_0', 'squeezenet1_1'])
def test_squeezenet_equals_torchvision(name):
  diffs = relative_differences(name, randomized(torch_peer(name)), (65,))
  assert max(diffs) < 1e-4, diffs


class _Reference(tnn.Module):
  """A torch restatement of a layout without a torchvision twin: features, flatten, classifier."""

  def __init__(self, features: tnn.Module, classifier: tnn.Module):
    super().__init__()
    self.features, self.classifier = features, classifier

  def forward(self, x):
    return self.classifier(torch.flatten(self.features(x), 1))


def test_alexnet_original_equals_a_torch_restatement():
  # Krizhevsky et al. 2012, Fig. 2 as a torch Sequential: groups=2 for the single-GPU convolutions
  # (conv2, conv4, conv5); LRN (torch's alpha is per channel, the paper's per sum) before pools.
  lrn = lambda: tnn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
  features = tnn.Sequential(
      tnn.Conv2d(3, 96, 11, 4), tnn.ReLU(), lrn(), tnn.MaxPool2d(3, 2),
      tnn.Conv2d(96, 256, 5, padding=2, groups=2), tnn.ReLU(), lrn(), tnn.MaxPool2d(3, 2),
      tnn.Conv2d(256, 384, 3, padding=1), tnn.ReLU(),
      tnn.Conv2d(384, 384, 3, padding=1, groups=2), tnn.ReLU(),
      tnn.Conv2d(384, 256, 3, padding=1, groups=2), tnn.ReLU(), tnn.MaxPool2d(3, 2))
  classifier = tnn.Sequential(
      tnn.Dropout(), tnn.Linear(9216, 4096), tnn.ReLU(), tnn.Dropout(), tnn.Linear(4096, 4096),
      tnn.ReLU(), tnn.Linear(4096, 1000))
  torch.manual_seed(0)
  twin = randomized(_Reference(features, classifier))
  assert sum(p.numel() for p in twin.parameters()) == model_spec('alexnet_original')['paper_params']
  assert max(relative_differences('alexnet_original', twin, (227,))) < 1e-4


def test_cifar_vgg16_equals_its_torch_twin():
  # torch_peers.CifarVGG: torchvision's vgg16_bn features (same names) and Linear(512, 10).
  torch.manual_seed(0)
  twin = randomized(torch_peer('cifar_vgg16'))
  assert sum(p.numel() for p in twin.parameters()) == DERIVED_COUNTS['cifar_vgg16']
  assert max(relative_differences('cifar_vgg16', twin, (32,))) < 1e-4
  # Initialised as torchvision's VGG (the parity experiment trains it from there).
  fresh = torch_peer('cifar_vgg16').requires_grad_(False)
  assert float(fresh.classifier.weight.std()) == pytest.approx(0.01, rel=0.05)
  assert float(fresh.features[0].bias.abs().max()) == 0.0
  conv = fresh.features[3]  # 64 -> 64, 3x3: Kaiming fan-out std sqrt(2 / (64 * 9)).
  assert float(conv.weight.std()) == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)


def test_cifar_nin_halves_the_maps_and_uses_dropout():
  model = create_model('cifar_nin', num_classes=10)
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda key: initial_variables(model, key, x.shape[1:]))(_key(0))
  _, state = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(
      variables, x)
  # Sec. 4.2: each pool downsamples by two (Caffe's ceil rounding): 32 -> 16 -> 8.
  sizes = [state['intermediates'][f'mlpconv{i}.cccp2']['__call__'][0].shape[1] for i in (1, 2, 3)]
  assert sizes == [32, 16, 8]
  # Dropout draws from the `dropout` stream: two keys, two outputs; eval is deterministic.
  train = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}))
  assert not np.allclose(train(variables, x, _key(1)),
                         train(variables, x, _key(2)))


def test_too_small_inputs_are_errors_not_nans():
  # nin: 63 -> 14 (11x11/4) -> 6 -> 2 -> 0 after the third 3x3/2 pool.
  model = create_model('nin', num_classes=10)
  with pytest.raises(ValueError, match='too small'):
    abstract_variables(model, (63, 63, 3))


def test_bfloat16_activations_float32_params_and_logits():
  for name, size in [('squeezenet1_1', 65), ('cifar_nin', 32)]:
    model = create_model(name, num_classes=10, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, size, size, 3)), jnp.float32)
    variables = jax.jit(lambda key: initial_variables(model, key, x.shape[1:]))(_key(0))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype('float32')}
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 10)
    assert np.isfinite(logits).all()


def test_alexnet_original_paper_init():
  # Sec. 5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5 and fc6, fc7; 0 elsewhere.
  model = create_model('alexnet_original', num_classes=10, hidden=16)
  params = jax.jit(lambda key: initial_variables(model, key, (227, 227, 3)))(_key(0))['params']
  ones = {name for name, p in params.items() if np.all(p['bias'] == 1)}
  zeros = {name for name, p in params.items() if np.all(p['bias'] == 0)}
  assert ones == {'features.4', 'features.10', 'features.12', 'classifier.1', 'classifier.4'}
  assert zeros == {'features.0', 'features.8', 'classifier.6'}
  assert abs(float(np.std(params['features.8']['kernel'])) - 0.01) < 1e-3
  assert params['features.10']['kernel'].shape == (3, 3, 192, 384)  # two groups of 192 maps


def test_vgg_train_step_updates_batch_stats():
  model = create_model('cifar_vgg16', num_classes=10)
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 32, 32, 3)), jnp.float32)
  variables = jax.jit(lambda key: initial_variables(model, key, x.shape[1:]))(_key(0))
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))(
      variables, x)
  changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
                                   updates['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))
  assert len(variables['batch_stats']) == 13  # one BN per convolution of configuration D
