"""A wheel of the project, installed outside the checkout, runs the default job (no network)."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

REPO = pathlib.Path(__file__).resolve().parents[1]
# What a build must not see: version control, virtual environments, earlier build outputs.
NOT_SOURCE = shutil.ignore_patterns('.git', '.venv', 'venv', 'build', 'dist', '*.egg-info',
                                    '__pycache__', '.pytest_cache', '.ruff_cache')
# `python -m resnet_jax.main ARGS` with the checkout out of reach: an editable install of it puts a
# finder on sys.meta_path (setuptools >= 64) or the checkout on sys.path (a .pth file); both go
# (but not an environment inside the checkout, like .venv). Then it writes {module: file} of every
# module that ran to MODULES.
RUN_MAIN = '''
import json, os, runpy, sys
repo, modules = os.path.realpath(sys.argv.pop(1)), sys.argv.pop(1)
under = lambda p, d: (os.path.realpath(p or os.curdir) + os.sep).startswith(d + os.sep)
sys.path[:] = [p for p in sys.path if not under(p, repo) or under(p, os.path.realpath(sys.prefix))]
sys.meta_path[:] = [f for f in sys.meta_path
                    if not getattr(f, '__module__', '').startswith('__editable__')]
try:
  runpy.run_module('resnet_jax.main', run_name='__main__', alter_sys=True)
finally:
  with open(modules, 'w') as f:
    json.dump({n: m.__file__ for n, m in list(sys.modules.items())
               if isinstance(getattr(m, '__file__', None), str)}, f)
'''


def pip(*args: str, cwd: pathlib.Path) -> None:
  """The running interpreter's pip, from local files only (--no-index: no network)."""
  done = subprocess.run([sys.executable, '-m', 'pip', *args, '--no-deps', '--no-index'], cwd=cwd,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_installed_wheel_runs_the_default_job_outside_the_checkout(tmp_path):
  # Build from a copy, so the checkout gets no build/ or egg-info (other runs may share it). No
  # build isolation, so no network: the [dev] extra brings the backend pyproject.toml asks for.
  source, dist, target, elsewhere = (tmp_path / d for d in ('source', 'dist', 'target', 'cwd'))
  shutil.copytree(REPO, source, ignore=NOT_SOURCE)
  pip('wheel', '--no-build-isolation', '--wheel-dir', str(dist), str(source), cwd=tmp_path)
  [wheel] = dist.glob('resnet_jax-*.whl')
  with zipfile.ZipFile(wheel) as f:
    names = set(f.namelist())
  # Every module of the package, the packaged default config included, and nothing else at the top.
  package = {p.relative_to(REPO).as_posix() for p in (REPO / 'resnet_jax').rglob('*.py')}
  assert 'resnet_jax/configs/default.py' in package
  assert package <= names, sorted(package - names)
  dist_info = wheel.name.split('-py')[0] + '.dist-info'
  assert {n.split('/')[0] for n in names} == {'resnet_jax', dist_info}

  pip('install', '--target', str(target), str(wheel), cwd=tmp_path)
  elsewhere.mkdir()
  workdir, modules = tmp_path / 'work', tmp_path / 'modules.json'
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1')
  done = subprocess.run(
      [sys.executable, '-c', RUN_MAIN, str(REPO), str(modules), f'--workdir={workdir}',
       '--config.num_epochs=3'], cwd=elsewhere, env=env, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  ran = json.loads(modules.read_text())
  assert ran['resnet_jax'] == str(target / 'resnet_jax' / '__init__.py')
  # The config the --config flag defaults to, from the installed package.
  assert str(target / 'resnet_jax' / 'configs' / 'default.py') in ran.values()
  environment = pathlib.Path(sys.prefix).resolve()
  from_checkout = [f for f in ran.values() if pathlib.Path(f).resolve().is_relative_to(REPO)
                   and not pathlib.Path(f).resolve().is_relative_to(environment)]
  assert not from_checkout
  results = json.loads((workdir / 'results.json').read_text())
  assert results['examples'] == 360
  # Chance is 0.1 for 10 classes; 3 epochs (66 steps, seconds on 2 cores) reach about 0.9.
  assert results['accuracy'] > 0.5, results
