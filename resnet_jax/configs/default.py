"""The embedded default: LeNet-5 on scikit-learn's 1,797 8x8 digits, no network, < 2 min on 2 cores.

The digits are upsampled to LeNet-5's 32x32 input; 1,437 train / 360 test images.
"""
from resnet_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'lenet5'
  config.model.act = 'relu'
  config.dataset.source = 'digits'
  config.dataset.eval_split = 'test'
  config.dataset.image_size = 32
  config.dataset.augment = 'none'
  config.dataset.mean = (50.0,)
  config.dataset.std = (90.0,)
  config.num_epochs = 30
  config.batch_size = 64
  config.optimizer.weight_decay = 5e-4
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.05
  config.checkpoint_every_steps = 200
  config.log_every_steps = 100
  config.eval_every_epochs = 10
  return config
