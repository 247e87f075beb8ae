"""The course notes' initialization study: a deep MLP's activations and gradients at init.

Unit-Gaussian inputs through `depth` fully connected layers of `width` units (the notes: 10 layers
of 500), for each activation and each initialization; nothing is trained, so the CPU budget is the
full study.

`symmetry`: the notes' pitfall of all-zero weights beside small random ones (std 0.01, 0.05) and
Xavier's: a 6-layer tanh MLP trained with SGD on a learnable labelling of Gaussian inputs, after
which every unit of a zero-initialised layer still has the same weights as its neighbours.
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
  c.symmetry = ml_collections.ConfigDict(dict(
      depth=6, width=100, inputs=64, examples=512, steps=200, learning_rate=0.1, act='tanh',
      inits=('zeros', 'normal:0.01', 'normal:0.05', 'xavier_normal')))
  return c
