"""The activation-function comparison: LeNet-5 on the MNIST folder with each activation.

Everything but `model.act` is the mnist_lenet5 recipe; `budget` sets the epochs (cpu: 1, full: 10).
SELU runs with its LeCun-normal init (chosen by build_model), the others with LeNet's default.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mnist_lenet5  # noqa: E402

ACTIVATIONS = ('sigmoid', 'tanh', 'relu', 'leaky_relu', 'elu', 'selu', 'gelu', 'swish')


def get_config(budget: str = 'cpu'):
  config = mnist_lenet5.get_config()
  config.num_epochs = 1 if budget == 'cpu' else 10
  config.dataset.eval_split = 'validation'
  config.dataset.val_fraction = 0.1
  config.log_every_steps = 100
  return config
