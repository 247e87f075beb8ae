"""The course notes' initialization study: a deep MLP's activations and gradients at init.

Unit-Gaussian inputs through `depth` fully connected layers of `width` units (the notes: 10 layers
of 500), for each activation and each initialization; nothing is trained, so the CPU budget is the
full study.
"""
import ml_collections


def get_config(budget: str = 'full'):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.depth = 10
  c.width = 500
  c.examples = 1000 if budget == 'full' else 500
  c.num_classes = 10
  c.acts = ('tanh', 'relu')
  # The notes' small random numbers (std 0.01 and 0.05), Glorot & Bengio 2010, He et al. 2015b.
  c.inits = ('normal:0.01', 'normal:0.05', 'xavier_normal', 'kaiming_in')
  c.bins = 40
  return c
