"""Inception-v4 and Inception-ResNet-v2: logits equal to their timm twins' (their parameter
counts are declared at registration and checked in test_models)."""
import functools

import jax
import numpy as np
import pytest
import torch
from twins import random_twin

from resnet_jax.convert import from_torch
from resnet_jax.models import create_model

# 139x139 instead of 299: the smallest side whose last grid is still 3x3 (139 -> 69 -> 67 -> 33 ->
# 31 -> 15 -> 7 -> 3), so every padded conv and every count_include_pad=False border average is
# exercised in all three stages; the nets themselves take down to 75x75 (a 1x1 last grid).
TWIN_SIZE = 139


@pytest.mark.parametrize('name', ['inception_v4', 'inception_resnet_v2'])
def test_matches_timm(name):
  twin = random_twin(name)
  x = np.random.default_rng(0).standard_normal((2, TWIN_SIZE, TWIN_SIZE, 3), dtype=np.float32)
  with torch.no_grad():
    theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  variables = from_torch(name, {k: v.numpy() for k, v in twin.state_dict().items()})
  model = create_model(name, num_classes=1000)
  ours = np.asarray(jax.jit(functools.partial(model.apply, train=False))(variables, x))
  assert ours.shape == theirs.shape == (2, 1000)
  scale = np.abs(theirs).max()
  err = np.abs(ours - theirs).max()
  assert err <= 1e-4 * scale, f'max |diff| {err:.3g}, max |logit| {scale:.3g}'


@pytest.mark.parametrize('name', ['inception_v4', 'inception_resnet_v2'])
def test_smallest_input(name):
  # Abstract forward at 75x75, the smallest side the unpadded reductions leave a 1x1 grid for.
  model = create_model(name, num_classes=10)
  x = jax.ShapeDtypeStruct((1, 75, 75, 3), np.float32)
  out, _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, train=False), x)
  assert out.shape == (1, 10)
