"""VGG-16 with BatchNorm on CIFAR-10 (`cifar_vgg16`): the recipe of widely used CIFAR code
(kuangliu/pytorch-cifar), not a paper's: no paper trains this exact layout. The second family of
the parity experiment (experiments/parity.py --recipe=experiments/configs/cifar10_vgg16.py).

SGD momentum 0.9, lr 0.1 on a cosine schedule to 0 over 200 epochs, weight decay 5e-4 (on every
weight, as torch's SGD given all parameters), batch 128, pad-4 crops + flips, per-channel mean/std.
"""
from resnet_jax.config import base_config


def get_config():
  config = base_config()
  config.model.name = 'cifar_vgg16'
  config.model.init = 'kaiming'  # torchvision's VGG: Kaiming normal fan-out convolutions.
  config.dataset.source = 'tfds:cifar10'
  config.dataset.eval_split = 'test'
  config.dataset.image_size = 32
  config.dataset.augment = 'cifar'
  config.dataset.pad = 4
  config.dataset.preprocess = 'standardize'
  config.dataset.num_workers = 2
  config.batch_size = 128
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.nesterov = False
  config.optimizer.weight_decay = 5e-4
  config.optimizer.decay_norm_and_bias = True
  config.optimizer.decay_style = 'l2'
  config.schedule.name = 'cosine'
  config.schedule.base_lr = 0.1
  config.schedule.warmup_epochs = 0.0
  config.num_epochs = 200.0
  config.log_every_steps = 100
  return config
