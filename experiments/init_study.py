"""Activation statistics and gradient norms per layer of a deep MLP at initialization.

  python experiments/init_study.py --workdir=DIR [--budget=cpu|full]

writes DIR/init_study.csv (act, init, layer, mean, std, grad_norm) and DIR/init_study.png: one row
per (activation, init), one histogram per hidden layer (ReLU: of the positive outputs; half are 0),
and the per-layer gradient norms in the last column. With tanh, std 0.01 shrinks the activations
to nothing within a few layers (and the gradients with them), Xavier keeps them alive; with ReLU,
Xavier halves the variance per layer and Kaiming keeps it (Glorot & Bengio 2010, Fig. 6; He et
al. 2015b, Sec. 2.2).

It also trains a 6-layer tanh MLP from all-zero weights, from small random ones (std 0.01, 0.05)
and from Xavier's, and writes DIR/init_symmetry.csv (init, layer, spread, loss_start, loss_end):
`spread` is the largest difference between any unit's incoming weights (and bias) and the first
unit's, after training. From zeros it stays exactly 0 in every hidden layer: every unit computes
the same function and gets the same update, so the symmetry between them is never broken (here
every hidden unit even stays at 0: its gradient is 0 while the weights after it are), and only
the output biases learn; from small random weights the units differ from the first step on (but
learn slowly through 6 tanh layers: the vanishing signal of the study above), from Xavier's they
learn the labelling.
"""
from __future__ import annotations

import csv
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.configs import init_study as study_config  # noqa: E402
from resnet_jax import xla_flags  # noqa: E402
from resnet_jax.models import create_model  # noqa: E402
from resnet_jax.models.mlp import hidden_outputs  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'Where the CSV and PNG go.', required=True)
_BUDGET = flags.DEFINE_enum('budget', 'cpu', ['cpu', 'full'], 'Size of the study.')


def layer_statistics(config, act: str, init: str) -> list[dict]:
  """Per hidden layer: mean and std of the activations, and the norm of the loss gradient with
  respect to the layer's weights (softmax cross-entropy on random labels), at initialization."""
  model = create_model('mlp', num_classes=config.num_classes, depth=config.depth,
                       width=config.width, act=act, kernel_init=init)
  key_x, key_y, key_init = jax.random.split(jax.random.key(config.seed), 3)
  x = jax.random.normal(key_x, (config.examples, config.width))
  y = jax.random.randint(key_y, (config.examples,), 0, config.num_classes)
  params = model.init(key_init, x[:1], train=False)['params']

  def loss(params):
    logits, state = model.apply({'params': params}, x, train=False, mutable=['intermediates'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

  grads, state = jax.jit(jax.grad(loss, has_aux=True))(params)
  outputs = hidden_outputs(state['intermediates'], 'post')
  return [{'act': act, 'init': init, 'layer': i + 1, 'mean': float(jnp.mean(h)),
           'std': float(jnp.std(h)),
           'grad_norm': float(jnp.linalg.norm(grads[f'dense{i + 1}']['kernel'])),
           'values': np.asarray(h).ravel()} for i, h in enumerate(outputs)]


def symmetry_rows(config, init: str) -> list[dict]:
  """Trains `config.symmetry`'s MLP from `init` with plain SGD (full batch) on Gaussian inputs
  labelled by a fixed random linear map, then measures each hidden layer's unit spread."""
  s = config.symmetry
  model = create_model('mlp', num_classes=config.num_classes, depth=s.depth, width=s.width,
                       act=s.act, kernel_init=init)
  key_x, key_map, key_init = jax.random.split(jax.random.key(config.seed), 3)
  x = jax.random.normal(key_x, (s.examples, s.inputs))
  y = jnp.argmax(x @ jax.random.normal(key_map, (s.inputs, config.num_classes)), axis=-1)
  params = model.init(key_init, x[:1], train=False)['params']
  tx = optax.sgd(s.learning_rate)

  def loss(params):
    logits = model.apply({'params': params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt = carry
      value, grads = jax.value_and_grad(loss)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), value
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), None, length=s.steps)
    return params, losses[0], loss(params)

  params, start, end = train(params)
  rows = []
  for i in range(1, s.depth + 1):
    layer = params[f'dense{i}']
    units = jnp.concatenate([layer['kernel'], layer['bias'][None]], axis=0)  # [in + 1, units]
    rows.append({'init': init, 'layer': i, 'spread': float(jnp.max(jnp.abs(units - units[:, :1]))),
                 'loss_start': float(start), 'loss_end': float(end)})
  return rows


def plot(rows: list[dict], config, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  runs = [(a, i) for a in config.acts for i in config.inits]
  fig, axes = plt.subplots(len(runs), config.depth + 1, figsize=(1.6 * (config.depth + 1),
                                                                 1.3 * len(runs)))
  for r, (act, init) in enumerate(runs):
    layers = [row for row in rows if row['act'] == act and row['init'] == init]
    for c, row in enumerate(layers):
      ax = axes[r, c]
      values = row['values'] if act == 'tanh' else row['values'][row['values'] > 0]
      lo, hi = (-1, 1) if act == 'tanh' else (0, max(1e-30, np.percentile(values, 99)))
      ax.hist(values, bins=config.bins, range=(lo, hi), color='tab:blue')
      ax.set_yticks([])
      ax.tick_params(labelsize=5)
      ax.set_title(f'L{row["layer"]} std {row["std"]:.2g}', fontsize=6)
    ax = axes[r, -1]
    ax.semilogy([row['layer'] for row in layers], [max(row['grad_norm'], 1e-30) for row in layers],
                'o-', color='tab:red', markersize=2)
    ax.tick_params(labelsize=5, which='both')
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f'grad norm {layers[0]["grad_norm"]:.1e}..{layers[-1]["grad_norm"]:.1e}',
                 fontsize=5)
    axes[r, 0].set_ylabel(f'{act}\n{init}', fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv) -> None:
  del argv
  config = study_config.get_config(_BUDGET.value)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  rows = [row for act in config.acts for init in config.inits
          for row in layer_statistics(config, act, init)]
  with open(os.path.join(_WORKDIR.value, 'init_study.csv'), 'w', newline='') as f:
    fields = ['act', 'init', 'layer', 'mean', 'std', 'grad_norm']
    writer = csv.DictWriter(f, fieldnames=fields, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
  plot(rows, config, os.path.join(_WORKDIR.value, 'init_study.png'))
  symmetry = [row for init in config.symmetry.inits for row in symmetry_rows(config, init)]
  with open(os.path.join(_WORKDIR.value, 'init_symmetry.csv'), 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(symmetry[0]))
    writer.writeheader()
    writer.writerows(symmetry)
  for act in config.acts:
    for init in config.inits:
      stds = [r['std'] for r in rows if r['act'] == act and r['init'] == init]
      print(f'{act:5s} {init:13s} layer-1 std {stds[0]:.3g}  layer-{len(stds)} std {stds[-1]:.3g}')
  print(f'after {config.symmetry.steps} SGD steps, the largest difference between a unit\'s '
        'weights and the first unit\'s, per hidden layer:')
  for init in config.symmetry.inits:
    rows = [r for r in symmetry if r['init'] == init]
    spreads = ' '.join(f"{r['spread']:.2g}" for r in rows)
    print(f"{init:13s} loss {rows[0]['loss_start']:.3f} -> {rows[0]['loss_end']:.3f}  "
          f'spread {spreads}')


if __name__ == '__main__':
  xla_flags.set_cpu_defaults()  # Before JAX starts its backends.
  app.run(main)
