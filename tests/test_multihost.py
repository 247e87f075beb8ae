"""Two processes x 4 CPU devices (jax.distributed on localhost, gloo collectives) train to the
parameters of one process x 8 devices: the same global batches, the same steps."""
import json
import os
import socket

import jax
import numpy as np
from conftest import main_process, run_main

from resnet_jax import checkpoint

RUN = ('--config.model.name=cifar_resnet20', '--config.dataset.image_size=16',
       '--config.dataset.augment=cifar', '--config.num_epochs=0.5',
       '--config.checkpoint_every_steps=4', '--config.log_every_steps=2',
       '--config.dataset.on_device=never',  # The host pipeline: one iterator state per process.
       # Zero-init starts each unit at the identity, where training is well conditioned, so the
       # one difference (the order of the all-reduce's sums) stays at rounding level for the 11
       # steps. From BN's plain init float32 rounding grows to ~1e-3 of the loss within a few
       # steps (1 vs 8 devices in test_train, ours vs torch in test_parity).
       '--config.model.zero_init_residual=true')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_hosts_train_like_one(tmp_path):
  two, one = str(tmp_path / 'two_hosts'), str(tmp_path / 'one_host')
  address = f'localhost:{free_port()}'
  processes = [main_process(f'--workdir={two}', '--multihost', f'--coordinator_address={address}',
                            '--num_processes=2', f'--process_id={i}', *RUN, devices=4)
               for i in range(2)]
  logs = [p.communicate(timeout=300)[1] for p in processes]
  for p, log in zip(processes, logs):
    assert p.returncode == 0, log[-3000:]
  assert '2 processes, 8 devices' in logs[0]
  assert 'Final test accuracy' in logs[0] and 'Final test accuracy' not in logs[1]  # Logs: p0.
  # One workdir lock and one run record, by process 0: process 1, on the same host and workdir,
  # would have been refused the lock had it tried; it followed process 0's decision instead.
  with open(f'{two}/run.json') as f:
    assert [(s['processes'], s['devices']) for s in json.load(f)['starts']] == [(2, 8)]
  with open(f'{two}/lock') as f:
    assert f.read() == ''  # Released at the end.
  done = run_main(f'--workdir={one}', *RUN, devices=8)
  assert done.returncode == 0, done.stderr[-3000:]

  # Each process kept its own place in the data: one iterator state per process.
  assert sorted(os.listdir(f'{two}/checkpoints/11/data')) == [
      'commit_success.txt', 'process_0-of-2.json', 'process_1-of-2.json']
  a, b = checkpoint.load_state_tree(two), checkpoint.load_state_tree(one)
  assert int(a['step']) == int(b['step']) == 11
  # Same computation; only the cross-process all-reduce may sum in another order.
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b)
  with open(f'{two}/results.json') as f, open(f'{one}/results.json') as g:
    assert json.load(f)['examples'] == json.load(g)['examples'] == 360
