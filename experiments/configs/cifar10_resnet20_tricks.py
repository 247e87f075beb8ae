"""ResNet-20 on CIFAR-10 with the training tricks of later papers on top of He et al. 2015's
recipe (cifar10_resnet20.py), each named with its source; the network is the same.

- zero-init of each residual branch's last BN scale (Goyal et al. 2017, Sec. 5.1);
- no weight decay on BN scales/offsets and biases (Goyal et al. 2017, Sec. 5.1; He et al. 2019,
  "Bag of Tricks", Sec. 3.1);
- a cosine learning rate over the same 64k iterations (Loshchilov & Hutter 2017; He et al. 2019,
  Sec. 5.1);
- label smoothing 0.1 (Szegedy et al. 2016, Sec. 7; He et al. 2019, Sec. 5.2);
- per-channel standardisation of the inputs (the CIFAR-10 channel means and stds).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cifar10_resnet20  # noqa: E402


def get_config():
  config = cifar10_resnet20.get_config()
  config.model.zero_init_residual = True
  config.optimizer.decay_norm_and_bias = False
  config.schedule.name = 'cosine'
  config.label_smoothing = 0.1
  config.dataset.preprocess = 'fixed'
  config.dataset.mean = (125.3, 123.0, 113.9)  # CIFAR-10 per-channel pixel mean and std.
  config.dataset.std = (63.0, 62.1, 66.7)
  return config
