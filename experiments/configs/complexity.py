"""The model-complexity comparison (Canziani et al. 2016): every registered ImageNet model's size,
operations, speed on the current device, and top-1 accuracy.

Top-1 is ImageNet validation, single centre crop, as reported: torchvision's figures for the weights
our twins import (resnet_jax.convert), else the paper's own single-model, single-crop number. Models
with neither (our pre-activation and NiN ImageNet nets) are timed but left off the accuracy chart.
"""
import ml_collections

TORCHVISION = 'torchvision weights (IMAGENET1K_V1)'
REPORTED_TOP1 = {
    'alexnet': (56.522, TORCHVISION),
    'alexnet_original': (59.3, 'Krizhevsky et al. 2012, Table 2 (1 CNN)'),
    'googlenet': (69.778, TORCHVISION),
    'inception_v3': (77.294, TORCHVISION),
    'inception_v4': (80.0, 'Szegedy et al. 2017, Table 2'),
    'inception_resnet_v2': (80.1, 'Szegedy et al. 2017, Table 2'),
    'xception': (79.0, 'Chollet 2017, Table 1'),
    'mobilenet_v1': (70.6, 'Howard et al. 2017, Table 7'),
    'mobilenet_v1_075': (68.4, 'Howard et al. 2017, Table 6'),
    'mobilenet_v1_050': (63.7, 'Howard et al. 2017, Table 6'),
    'mobilenet_v1_025': (50.6, 'Howard et al. 2017, Table 6'),
    'mobilenet_v2': (71.878, TORCHVISION),
    'squeezenet1_0': (58.092, TORCHVISION),
    'squeezenet1_1': (58.178, TORCHVISION),
    'resnet18': (69.758, TORCHVISION),
    'resnet34': (73.314, TORCHVISION),
    'resnet50': (76.130, TORCHVISION),
    'resnet101': (77.374, TORCHVISION),
    'resnet152': (78.312, TORCHVISION),
    'vgg11': (69.020, TORCHVISION),
    'vgg11_bn': (70.370, TORCHVISION),
    'vgg13': (69.928, TORCHVISION),
    'vgg13_bn': (71.586, TORCHVISION),
    'vgg16': (71.592, TORCHVISION),
    'vgg16_bn': (73.360, TORCHVISION),
    'vgg19': (72.376, TORCHVISION),
    'vgg19_bn': (74.218, TORCHVISION),
}

# The course notes' architecture history: batch-1 inference latency of five nets on an NVIDIA
# Titan Xp, in ms, as its table prints them (SqueezeNet as v1.0, MobileNet as v1).
HISTORY_LATENCY_MS = {'resnet18': 2.9, 'alexnet': 1.0, 'vgg16': 1.7, 'squeezenet1_0': 2.7,
                      'mobilenet_v1': 33.3}


def get_config(budget: str = 'cpu'):
  """Timing settings. full: Canziani et al.'s batch-1 latency and a batch-64 throughput; cpu: the
  latency and a batch-8 throughput with fewer rounds, so that two cores finish in minutes."""
  c = ml_collections.ConfigDict()
  c.dtype = 'float32'
  if budget == 'full':
    c.latency = dict(batch=1, steps=10, rounds=5, warmup=3)
    c.throughput = dict(batch=64, steps=10, rounds=5, warmup=3)
  else:
    c.latency = dict(batch=1, steps=2, rounds=3, warmup=1)
    c.throughput = dict(batch=8, steps=1, rounds=2, warmup=1)
  return c
