"""The benchmark (resnet_jax.bench): FLOPs from XLA's cost analysis against the papers'
arithmetic, the step, profile, convolution and pipeline rows, the command line, XLA's defaults."""
import os
import subprocess
import sys

import pytest

from resnet_jax.bench import cli, complexity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resnet50_forward_flops_match_the_paper():
  # He et al. 2015, Table 1: 3.8e9 FLOPs counted as multiply-adds for the stride-on-1x1 net;
  # torchvision's layout (stride on the 3x3) does 4.09 GMACs. XLA counts 2 FLOPs per MAC.
  assert complexity.forward_flops('resnet50') == pytest.approx(2 * 4.09e9, rel=0.03)


def test_lenet5_flops_are_its_multiply_adds():
  # C1 28*28*6*25 + C3 10*10*16*150 + C5 120*400 + F6 120*84 + output 84*10 = 416,520 MACs.
  assert complexity.forward_flops('lenet5') == pytest.approx(2 * 416_520, rel=0.05)


def test_zoo_table_prints_every_column(capsys):
  cli.main(['--zoo', '--models', 'cifar_resnet20,resnet18', '--markdown'])
  out = capsys.readouterr().out.splitlines()
  assert out[0] == '| model | input | classes | params | gflops | twin | paper |'
  assert out[3].startswith('| resnet18 | 224x224x3 | 1000 | 11,689,512 | 3.')
  assert 'torchvision resnet18' in out[3] and 'He et al. 2015' in out[3]


@pytest.mark.parametrize('name', ['cifar_resnet20', 'plain20'])
def test_torch_peer_of_the_cifar_nets_computes_our_function(name):
  # The --vs-torch peer must be the same network, or the ratio compares different work.
  import jax
  import numpy as np
  import torch
  from twins import randomize_batch_norms

  from resnet_jax.convert import from_torch
  from resnet_jax.models import create_model
  from resnet_jax.torch_peers import torch_peer
  torch.manual_seed(0)
  peer = randomize_batch_norms(torch_peer(name, 10)).eval()
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    theirs = peer(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  variables = from_torch(name, peer.state_dict())
  ours = np.asarray(jax.jit(lambda v, x: create_model(name, num_classes=10).apply(
      v, x, train=False))(variables, x))
  assert np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs)) < 1e-4


def test_step_benchmark_json_has_the_documented_keys(capsys):
  import json
  cli.main(['--model', 'lenet5', '--batch', '8', '--mode', 'train', '--json',
                  '--steps', '1', '--rounds', '1', '--warmup', '1'])
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ('model', 'batch', 'dtype', 'mode', 'images_per_sec', 'flops_per_step', 'peak_bytes'):
    assert key in row
  # LeNet-5 forward is 416,520 MACs per image; a training step is ~3x the forward.
  assert 2 * 416_520 * 8 * 2 < row['flops_per_step'] < 2 * 416_520 * 8 * 5
  assert row['peak_bytes'] > 4 * 61_706 and row['images_per_sec'] > 0 and 0 < row['mfu'] < 1


def test_profile_sums_the_traced_instructions_of_the_step(capsys):
  import json
  cli.main(['--model', 'lenet5', '--batch', '8', '--mode', 'train', '--profile', '--json',
                  '--steps', '3'])
  row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  kinds, top = row['kinds'], row['top']
  # The instructions are the compiled step's own; they account for most of a step (the rest is
  # dispatch) and never for more than it.
  assert 0.2 * row['step_ms'] < row['ops_ms'] < 1.5 * row['step_ms']
  assert sum(k['ms'] for k in kinds.values()) == pytest.approx(row['ops_ms'])
  assert all(not k[-1].isdigit() for k in kinds)  # 'ynn_fusion', not 'ynn_fusion.3'
  assert [t['ms'] for t in top] == sorted((t['ms'] for t in top), reverse=True)
  assert any('conv' in t['source'] for t in top)  # LeNet-5's convolutions are among the largest
  cli.main(['--model', 'lenet5', '--batch', '8', '--mode', 'infer', '--profile',
                  '--steps', '2'])
  out = capsys.readouterr().out
  assert 'instruction kind' in out and '% of step' in out and 'the largest single' in out


def test_convs_lists_each_distinct_convolution_of_the_model(capsys):
  import json
  cli.main(['--model', 'cifar_resnet20', '--batch', '2', '--convs', '--vs-torch', '--json',
                  '--steps', '1', '--rounds', '1', '--warmup', '1'])
  rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  # He et al. 2015, Sec. 4.2: the 3->16 stem, 3 stages of 2n = 6 3x3 convolutions at 16/32/64
  # filters, the first of stages 2 and 3 with stride 2 (option A shortcuts: no projection).
  layers = {(r['input'], r['kernel'], r['channels']): r['count'] for r in rows}
  assert layers == {('2x32x32x3', '3x3/1', '3->16'): 1, ('2x32x32x16', '3x3/1', '16->16'): 6,
                    ('2x32x32x16', '3x3/2', '16->32'): 1, ('2x16x16x32', '3x3/1', '32->32'): 5,
                    ('2x16x16x32', '3x3/2', '32->64'): 1, ('2x8x8x64', '3x3/1', '64->64'): 5}
  assert [r['input_grad'] for r in rows] == [False] + [True] * 5  # none for the images
  stage1 = rows[1]
  assert stage1['gflop'] == pytest.approx(2 * 2 * 32 * 32 * 9 * 16 * 16 / 1e9)
  for row in rows:
    assert all(row[f'{who}{k}_ms'] > 0 for who in ('', 'torch_') for k in ('fwd', 'dx', 'dw'))
    assert row['vs_torch'] > 0
  cli.main(['--model', 'lenet5', '--batch', '2', '--convs', '--steps', '1', '--rounds', '1',
                  '--warmup', '1'])
  out = capsys.readouterr().out
  assert 'kernel/stride' in out
  assert "lenet5, batch 2, float32: one training step's convolutions" in out


def test_pipeline_benchmark_decodes_and_crops(capsys):
  cli.main(['--mode', 'pipeline', '--count', '8', '--workers', '1', '--json'])
  import json
  row = json.loads(capsys.readouterr().out.strip())
  assert row['count'] == 8 and row['image_size'] == 224 and row['images_per_sec_per_core'] > 0
  assert 30 < row['mean_kb'] < 400  # Photo-sized JPEGs, not tiny ones.
  assert row['workers'] == 1 and row['images_per_sec_workers'] > 0


def test_both_module_names_run_the_same_command_line(tmp_path):
  # `python -m resnet_jax.benchmark` is kept for the docs and scripts that name it.
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO}
  outputs = [subprocess.run([sys.executable, '-m', module, '--zoo', '--models', 'lenet5',
                             '--markdown'], env=env, cwd=tmp_path, capture_output=True,
                            text=True, check=True).stdout
             for module in ('resnet_jax.benchmark', 'resnet_jax.bench')]
  assert outputs[0] == outputs[1] and '| lenet5 | 32x32x1 | 10 |' in outputs[0]


def test_importing_the_package_leaves_xla_flags_alone_and_the_entry_sets_them(tmp_path):
  # Entry points call xla_flags.set_cpu_defaults() (measured on jaxlib 0.10: convolutions through
  # XLA's own kernels, not YNNPACK's fusions); importing the package changes nothing.
  import importlib.util
  from importlib import metadata
  probe = ('import os, jax{}\n'
           'def loss(x, w):\n'
           '  dims = ("NHWC", "HWIO", "NHWC")\n'
           '  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dims)\n'
           '  return y.sum()\n'
           'x, w = jax.numpy.ones((128, 32, 32, 16)), jax.numpy.ones((3, 3, 16, 16))\n'
           'hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()\n'
           'print(os.environ["XLA_FLAGS"]); print("ynn_fusion" in hlo)\n')
  modules = ['resnet_jax', 'resnet_jax.models', 'resnet_jax.bench.cli']
  if importlib.util.find_spec('resnet_jax.train') is not None:
    modules.append('resnet_jax.train')
  imported = ''.join(f', {m}' for m in modules)
  # As the entry points do: after the imports, before the first computation.
  entry = ('from resnet_jax import xla_flags\n'
           'xla_flags.set_cpu_defaults()')

  def run(xla_flags, code):
    env = {**os.environ, 'XLA_FLAGS': xla_flags, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO}
    out = subprocess.run([sys.executable, '-c', probe.format(imported + code)], env=env,
                         capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    flags, fused = out.split('\n')[:2]
    return flags, fused == 'True'

  devices = '--xla_force_host_platform_device_count=2'
  flags, fused = run(devices, '')
  assert flags == devices
  if tuple(int(p) for p in metadata.version('jaxlib').split('.')[:2]) != (0, 10):
    pytest.skip('the default is set on jaxlib 0.10 only (older XLA aborts on the flag)')
  assert fused  # XLA's own default: YNNPACK fusions
  flag = '--xla_cpu_experimental_ynn_fusion_type'
  assert run(devices, '\n' + entry) == (f'{devices} {flag}=', False)
  chosen = f'{flag}=individual_convolution'
  assert run(chosen, '\n' + entry)[0] == chosen  # the user's own setting stays


def test_accelerator_command_runs_every_row_at_tiny_sizes(tmp_path):
  # The one command a lent GPU runs (docs/benchmarks.md), here at toy sizes on the CPU.
  import json
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO, 'XLA_FLAGS': ''}
  done = subprocess.run([sys.executable, '-m', 'resnet_jax.bench.accelerator', '--tiny',
                         '--out', str(tmp_path / 'out'), '--wheels', str(tmp_path / 'none')],
                        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  document = json.loads((tmp_path / 'out' / 'accelerator.json').read_text())
  assert document['tiny'] and document['platform'] == 'cpu'
  assert document['installed_from_wheels'] == []  # Nothing missing here.
  assert all(v > 0 for v in document['peak_matmul_tflops'].values())
  rows = {(r['benchmark'], r['impl'], r['dtype'], r['batch']): r for r in document['rows']}
  expected = {('resnet50 train', impl, dtype, 2) for impl in ('ours', 'torch eager',
                                                              'torch.compile')
              for dtype in ('bfloat16', 'float32')}
  expected |= {('cifar_resnet20 train on device', 'ours', d, 8) for d in ('bfloat16', 'float32')}
  expected |= {(f'{name} latency', 'ours', 'float32', 1) for name in
               ('alexnet', 'vgg16', 'googlenet', 'resnet50', 'mobilenet_v1')}
  assert set(rows) == expected
  assert all(r['images_per_sec'] > 0 for r in rows.values())
  ours = [r for r in rows.values() if r['impl'] == 'ours']
  assert all(r['tflops'] > 0 and 0 < r['peak_share'] for r in ours)
  assert all(r['latency_ms'] > 0 for r in ours if r['batch'] == 1)
  table = done.stdout
  assert 'TFLOP/s' in table and '% of peak' in table and 'torch.compile' in table


def _wheel(folder, dist: str, module: str) -> str:
  """A real (if minimal) wheel of one pure-Python module, as pip download would leave it."""
  import base64
  import hashlib
  import zipfile
  files = {f'{module}.py': 'VALUE = 42\n',
           f'{dist}-1.0.dist-info/METADATA': f'Metadata-Version: 2.1\nName: {dist}\n'
                                            'Version: 1.0\n',
           f'{dist}-1.0.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\n'
                                         'Root-Is-Purelib: true\nTag: py3-none-any\n'}
  record = [f'{name},sha256='
            + base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip('=')
            + f',{len(text.encode())}' for name, text in files.items()]
  files[f'{dist}-1.0.dist-info/RECORD'] = '\n'.join(record + [f'{dist}-1.0.dist-info/RECORD,,'])
  path = os.path.join(folder, f'{dist}-1.0-py3-none-any.whl')
  with zipfile.ZipFile(path, 'w') as z:
    for name, text in files.items():
      z.writestr(name, text)
  return path


def test_accelerator_installs_what_is_missing_from_the_carried_wheels(tmp_path, monkeypatch):
  import importlib

  from resnet_jax.bench import accelerator
  monkeypatch.setattr(accelerator, 'CARRIED', (('carried_probe', 'carried_probe'),))
  with pytest.raises(SystemExit, match='--download-wheels'):
    accelerator.install_missing(str(tmp_path))  # No wheels there.
  _wheel(str(tmp_path), 'carried_probe', 'carried_probe')
  path, site = list(sys.path), str(tmp_path / 'site')  # A folder, not this environment.
  try:
    assert accelerator.install_missing(str(tmp_path), target=site) == ['carried_probe']
    assert importlib.import_module('carried_probe').VALUE == 42
    assert os.path.exists(os.path.join(site, 'carried_probe.py'))
    assert accelerator.install_missing(str(tmp_path), target=site) == []  # Present now.
  finally:
    sys.path[:] = path
    sys.modules.pop('carried_probe', None)
