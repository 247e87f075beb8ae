"""The float64 gradient check (resnet_jax.gradcheck): jax.grad of the small models, and our
BatchNorm's custom gradient, against centred differences; and a wrong gradient caught."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import gradcheck


@pytest.mark.parametrize('name', ['lenet5', 'mlp'])
def test_small_models_gradients_agree_with_centred_differences(name):
  # LeNet-5 (tanh, average-pooling subsampling) and the MLP in training mode, in float64.
  errors = gradcheck.check_model(name, train=True)
  assert len(errors) == {'lenet5': 10, 'mlp': 8}[name]  # Every kernel and bias checked.
  assert max(errors.values()) < 1e-6, errors


def test_batch_norm_custom_gradient_agrees_with_centred_differences():
  # ResNet-20 in training mode: every BatchNorm's gradient is layers.batch_norm_train's closed
  # form. tanh keeps the function smooth: a ReLU's kink inside the step spoils the difference.
  errors = gradcheck.check_model('cifar_resnet20', train=True, act='tanh', samples=2)
  assert len(errors) == 59 and max(errors.values()) < 1e-5, errors


def test_a_wrong_gradient_is_caught():
  @jax.custom_vjp
  def square(x):
    return x * x

  square.defvjp(lambda x: (x * x, x), lambda x, g: (2.02 * x * g,))  # 1% too large.
  params = {'w': np.linspace(-1.0, 1.0, 7)}
  good = gradcheck.check_gradients(lambda p: jnp.sum(p['w'] * p['w']), params)
  bad = gradcheck.check_gradients(lambda p: jnp.sum(square(p['w'])), params)
  assert good['w'] < 1e-9 and bad['w'] == pytest.approx(0.02 / 2.02, rel=1e-6)


def test_relative_error_floors_zero_gradients():
  a, n = np.array([0.0, 1.0, 1e-12]), np.array([1e-12, 1.01, 0.0])
  np.testing.assert_allclose(gradcheck.relative_error(a, n), [1e-4, 0.01 / 1.01, 1e-4])
