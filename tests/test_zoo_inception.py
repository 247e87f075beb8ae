"""GoogLeNet and Inception-v3: parameter counts with the auxiliary heads (the registered nets'
are checked in test_models), and logits equal to their torchvision twins'."""
import functools

import jax
import numpy as np
import pytest
import torch
from twins import randomize_batch_norms

from resnet_jax.convert import from_torch
from resnet_jax.models import count_params, create_model
from resnet_jax.torch_peers import torch_peer


# torchvision's counts with the auxiliary heads on (the default of its constructors).
@pytest.mark.parametrize('name, expected', [('googlenet', 13_004_888),
                                            ('inception_v3', 27_161_264)])
def test_param_counts_with_aux_heads(name, expected):
  assert count_params(name, aux_logits=True) == expected


def _twin(name, **kwargs):
  """A randomly initialised torchvision twin whose BatchNorms are not identities at eval.

  Convolutions are redrawn He-normal: with torchvision's N(0, 0.1) Inception-v3 activations grow
  ~5x a layer at eval (logits ~1e9), where small errors would hide under the largest values.
  """
  torch.manual_seed(0)
  model = torch_peer(name, transform_input=False, init_weights=True, **kwargs)
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.Conv2d):
        torch.nn.init.kaiming_normal_(module.weight, nonlinearity='relu')
  return randomize_batch_norms(model)


def _inputs(size, batch=2):
  x = np.random.default_rng(0).standard_normal((batch, size, size, 3), dtype=np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def _outputs(name, twin, size, *, train, batch=2, **overrides):
  """(ours, theirs) on the same batch, both in eval or both in training mode."""
  x, x_torch = _inputs(size, batch)
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  variables = from_torch(name, state, **overrides)
  model = create_model(name, num_classes=1000, **overrides)
  if train:
    forward = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0])
  else:
    forward = jax.jit(functools.partial(model.apply, train=False))
  ours = jax.tree.map(np.asarray, forward(variables, x))
  twin.train(train)
  with torch.no_grad():
    theirs = twin(x_torch)
  theirs = jax.tree.map(lambda t: t.numpy(), tuple(theirs) if train else theirs)
  return ours, theirs


def _assert_close(ours, theirs, rtol=1e-4):
  assert ours.shape == theirs.shape
  scale = np.abs(theirs).max()
  err = np.abs(ours - theirs).max()
  assert err <= rtol * scale, f'max |diff| {err:.3g}, max |logit| {scale:.3g}'


# 79x79: the smallest side at which all four ceil_mode pools round up (40->20->10->5->3), so the
# -inf padding is exercised, and inception5b still sees a 3x3 map (the net itself takes 15x15).
GOOGLENET_SIZE = 79


@pytest.mark.parametrize('aux_logits', [False, True])
def test_googlenet_matches_torchvision(aux_logits):
  twin = _twin('googlenet', aux_logits=aux_logits)
  overrides = {'aux_logits': True} if aux_logits else {}
  ours, theirs = _outputs('googlenet', twin, GOOGLENET_SIZE, train=False, **overrides)
  _assert_close(ours, theirs)


def test_googlenet_aux_heads_match_torchvision_in_training():
  """Training mode (batch statistics, dropout off): logits and both auxiliary outputs agree."""
  twin = _twin('googlenet', aux_logits=True, dropout=0.0, dropout_aux=0.0)
  ours, theirs = _outputs('googlenet', twin, GOOGLENET_SIZE, train=True, aux_logits=True,
                          dropout_rate=0.0, aux_dropout_rate=0.0)
  # torchvision returns (logits, aux2, aux1); ours is (logits, aux1, aux2).
  for a, b in zip(ours, (theirs[0], theirs[2], theirs[1])):
    _assert_close(a, b)


# 75x75: torchvision's documented minimum; Mixed_6e sees 3x3, Mixed_7c 1x1.
INCEPTION_SIZE = 75


@pytest.mark.parametrize('aux_logits', [False, True])
def test_inception_v3_matches_torchvision(aux_logits):
  twin = _twin('inception_v3', aux_logits=aux_logits)
  overrides = {'aux_logits': True} if aux_logits else {}
  ours, theirs = _outputs('inception_v3', twin, INCEPTION_SIZE, train=False, **overrides)
  _assert_close(ours, theirs)


def test_inception_v3_aux_head_matches_torchvision_in_training():
  """Training mode (batch statistics, dropout off) at 299x299, the size the aux head needs.

  Batch 4: the head's last BN sees a 1x1 map, and over only 2 samples its batch variance is
  ill-conditioned (relative differences of 2.5e-4 from float32 rounding alone). Over 4 it still
  amplifies rounding: the aux logits differed by 1.7e-4 of their largest with flax's BatchNorm
  statistics; with layers.BatchNorm's axis-by-axis sums 0.5e-4 (main logits 0.3e-4).
  """
  twin = _twin('inception_v3', aux_logits=True, dropout=0.0)
  (logits, aux), (their_logits, their_aux) = _outputs(
      'inception_v3', twin, 299, train=True, batch=4, aux_logits=True, dropout_rate=0.0)
  _assert_close(logits, their_logits)
  _assert_close(aux, their_aux)


def test_googlenet_lrn_is_caffes_after_pool1_and_conv3(monkeypatch):
  """Szegedy et al. 2015, Fig. 3: LocalRespNorm after the first max pool (64 maps) and after
  conv3 (192 maps, before the second pool), with the BVLC Caffe model's constants."""
  from resnet_jax.models import googlenet
  x = np.random.default_rng(3).standard_normal((2, 5, 5, 12)).astype(np.float32) * 30
  # Caffe's LRN is torch's LocalResponseNorm: alpha on the mean of the squares, k = 1.
  theirs = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(
      torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(googlenet.caffe_lrn(x), theirs, rtol=1e-5, atol=1e-6)

  assert count_params('googlenet', lrn=True) == count_params('googlenet')  # no parameters
  seen, caffe_lrn = [], googlenet.caffe_lrn
  monkeypatch.setattr(googlenet, 'caffe_lrn', lambda x: seen.append(x.shape) or caffe_lrn(x))
  # He init keeps the activations at the input's scale (BN is the identity at init), so at 30x
  # the windows' sums of squares reach ~1 / alpha and the LRN is far from the identity.
  plain = create_model('googlenet', num_classes=10, kernel_init='kaiming_in')
  x = np.random.default_rng(4).standard_normal((2, 64, 64, 3)).astype(np.float32) * 30
  variables = jax.jit(functools.partial(plain.init, train=False))(jax.random.key(0), x)
  forward = lambda model: jax.jit(functools.partial(model.apply, train=False))(variables, x)
  without, with_lrn = forward(plain), forward(plain.clone(lrn=True))
  # 64 -> conv1 32 -> pool1 16 (64 maps) ... conv3 16 (192 maps) -> pool2 8.
  assert seen == [(2, 16, 16, 64), (2, 16, 16, 192)]
  assert np.abs(with_lrn - without).max() > 0.1 * np.abs(without).max()
