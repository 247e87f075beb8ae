"""Xception and MobileNet v1 and v2: the width multiplier's counts, and the logits of their timm
and torchvision twins (random weights, randomised BatchNorms) imported by name. The registered
nets' parameter counts are declared at registration and checked in test_models."""
import jax
import numpy as np
import pytest
import timm
import torch
from twins import random_twin, randomize_batch_norms

from resnet_jax import convert
from resnet_jax.models import count_params, create_model
from resnet_jax.models.mobilenet import round_channels

# Xception's head is a global average pool, so a small input suffices: 71x71 (Keras's minimum)
# takes the grid 35 -> 33 -> 17 -> 9 -> 5 -> 3, odd sizes through every padded pool.
XCEPTION_SIZE = 71
# MobileNet v1 at 64x64 (grid 32 -> 2; even sizes, where PyTorch's symmetric padding and TF's
# 'SAME' differ) and at 97x97 (49 -> 25 -> 13 -> 7 -> 4), to show any input resolution works.
MOBILENET_SIZES = (64, 97)


def test_mobilenet_width_1_25_count_is_timms():
  assert count_params('mobilenet_v1', width=1.25) == 6_270_840  # timm's mobilenetv1_125


def test_round_channels():
  assert [round_channels(c) for c in (8, 24, 32 * 0.25, 1024 * 0.75)] == [8, 24, 8, 768]
  assert round_channels(3) == 8  # never below the divisor
  assert round_channels(36) == 40  # nearest multiple of 8, ties up
  assert round_channels(32 * 0.6) == 24  # 19.2: nearest is 16, more than 10% down, so 24
  assert round_channels(1024 * 0.35) == 360  # 358.4 -> 360


def _outputs(name, twin, size, *, train=False, **overrides):
  """(ours, theirs) on the same random batch of 2, both in eval or both in training mode."""
  x = np.random.default_rng(0).standard_normal((2, size, size, 3), dtype=np.float32)
  state = {k: v.numpy() for k, v in twin.state_dict().items()}
  variables = convert.from_torch(name, state, num_classes=1000, **overrides)
  model = create_model(name, num_classes=1000, **overrides)
  if train:
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])[0])
    twin.train()
  else:
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  ours = np.asarray(apply(variables, x))
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  return ours, theirs


def _assert_close(ours, theirs):
  assert ours.shape == theirs.shape == (2, 1000)
  scale = np.abs(theirs).max()
  err = np.abs(ours - theirs).max()
  assert err <= 1e-4 * scale, f'max |diff| {err:.3g} vs max |logit| {scale:.3g}'


def test_xception_matches_timm():
  _assert_close(*_outputs('xception', random_twin('xception'), XCEPTION_SIZE))


@pytest.mark.parametrize('size', MOBILENET_SIZES)
def test_mobilenet_v1_matches_timm(size):
  _assert_close(*_outputs('mobilenet_v1', random_twin('mobilenet_v1'), size))


def test_mobilenet_v1_width_1_25_matches_timm():
  """The width multiplier: timm's mobilenetv1_125 is our mobilenet_v1 with width=1.25."""
  torch.manual_seed(0)
  twin = randomize_batch_norms(timm.create_model('mobilenetv1_125', pretrained=False)).eval()
  _assert_close(*_outputs('mobilenet_v1', twin, MOBILENET_SIZES[0], width=1.25))


def test_mobilenet_v1_matches_timm_in_training():
  """Training mode (batch statistics, no dropout): the same logits as timm's.

  At 97x97 the last BNs normalise over 2x4x4 values per channel (7e-6 relative error); at 64x64
  over only 2x2x2, where near-zero batch variances magnify fp32 rounding (2e-5).
  """
  _assert_close(*_outputs('mobilenet_v1', random_twin('mobilenet_v1'), MOBILENET_SIZES[1],
                          train=True))


@pytest.mark.parametrize('width,count', [(0.35, 1_677_128), (0.5, 1_968_680), (0.75, 2_636_424),
                                         (1.4, 6_108_776)])
def test_mobilenet_v2_width_counts_are_torchvisions(width, count):
  # torchvision.models.mobilenet_v2(width_mult=width): below 1 the last conv keeps 1280 channels.
  assert count_params('mobilenet_v2', width=width) == count


@pytest.mark.parametrize('size', MOBILENET_SIZES)
def test_mobilenet_v2_matches_torchvision(size):
  _assert_close(*_outputs('mobilenet_v2', random_twin('mobilenet_v2'), size))


def test_mobilenet_v2_width_0_5_matches_torchvision_in_training():
  """Training-mode BN (batch statistics), the shortcuts and a width that rounds (0.5 * 24 = 12
  -> 16 channels) at once."""
  twin = random_twin('mobilenet_v2', width_mult=0.5, dropout=0.0)  # Dropout draws differ.
  ours, theirs = _outputs('mobilenet_v2', twin, MOBILENET_SIZES[1], train=True, width=0.5,
                          dropout_rate=0.0)
  _assert_close(ours, theirs)
