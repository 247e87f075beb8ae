"""launch.sh: usage, argument checks, dry runs, and arguments arriving intact (no gcloud needed)."""
import json
import os
import pathlib
import shlex
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch.sh'
# Spaces, both quotes, $, ; and a backslash: each shell layer must pass it through untouched.
NASTY = '--config.model.name=a b$c;d "e" \'f\' \\g'
CONFIG = 'experiments/configs/default.py'


def recorder(tmp_path: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path]:
  """An executable `tmp_path/bin/name` appending its argv as one JSON line to the returned log."""
  bin_dir, log = tmp_path / 'bin', tmp_path / f'{name}.jsonl'
  bin_dir.mkdir(exist_ok=True)
  program = bin_dir / name
  program.write_text(f'#!{sys.executable}\nimport json, sys\n'
                     f'with open({str(log)!r}, "a") as f:\n'
                     f'  f.write(json.dumps(sys.argv[1:]) + "\\n")\n')
  program.chmod(0o755)
  return program, log


def calls(log: pathlib.Path) -> list[list[str]]:
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def launch(*args: str, tmp_path: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
  """launch.sh ARGS with a recording fake `gcloud` first on PATH, so a real one never runs."""
  recorder(tmp_path, 'gcloud')
  path = f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}'
  return subprocess.run(['bash', str(LAUNCH), *args], capture_output=True, text=True, timeout=30,
                        env=dict(os.environ, PATH=path, **env), cwd=tmp_path)


def remote_command(argv: list[str]) -> list[str]:
  """The words of the `--command=` of a gcloud ssh argv, as the remote shell parses them."""
  [command] = [arg for arg in argv if arg.startswith('--command=')]
  return shlex.split(command.removeprefix('--command='))


TPU_ARGS = ('my-tpu', 'us-central2-b', CONFIG, 'gs://bucket/run 1', '--mode=eval', NASTY)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_help_exits_0_and_names_every_mode(flag, tmp_path):
  result = launch(flag, tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  for word in ('local', 'tpu-vm', '--dry-run', '--no-setup', '--project', 'Examples'):
    assert word in result.stdout


@pytest.mark.parametrize('args', [(), ('bogus',), ('local', 'only-config'), ('--bogus', 'local'),
                                  ('tpu-vm', 'tpu', 'zone', CONFIG),
                                  ('local', '--no-setup', CONFIG, '/tmp/w')])
def test_bad_usage_exits_2_with_usage_on_stderr(args, tmp_path):
  result = launch(*args, tmp_path=tmp_path)
  assert result.returncode == 2
  assert 'Usage:' in result.stderr and result.stdout == ''
  assert calls(tmp_path / 'gcloud.jsonl') == []


def test_tpu_vm_rejects_a_workdir_outside_cloud_storage(tmp_path):
  result = launch('tpu-vm', 'my-tpu', 'us-central2-b', CONFIG, '/tmp/not-shared', tmp_path=tmp_path)
  assert result.returncode == 2
  assert "'/tmp/not-shared'" in result.stderr and 'gs://' in result.stderr
  assert calls(tmp_path / 'gcloud.jsonl') == []


def test_tpu_vm_dry_run_prints_setup_and_run_commands_and_runs_nothing(tmp_path):
  result = launch('--dry-run', 'tpu-vm', *TPU_ARGS, tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  assert calls(tmp_path / 'gcloud.jsonl') == []
  lines = [shlex.split(line) for line in result.stdout.splitlines()]
  assert [line[:5] for line in lines] == [
      ['gcloud', 'compute', 'tpus', 'tpu-vm', verb] for verb in ('ssh', 'scp', 'ssh', 'ssh')]
  for line in lines:
    assert '--worker=all' in line and '--zone=us-central2-b' in line
    assert not any(arg.startswith('--project') for arg in line)
  clean, copy, install, run = lines
  assert remote_command(clean) == ['rm', '-rf', '~/resnet_jax', '&&', 'mkdir', '-p', '~/resnet_jax']
  assert '--recurse' in copy and 'my-tpu:resnet_jax' in copy
  assert str(REPO / 'resnet_jax') in copy and str(REPO / 'setup.cfg') in copy
  assert not any(pathlib.Path(arg).name.startswith('.') for arg in copy)
  assert remote_command(install) == [
      'cd', '~/resnet_jax', '&&', 'python3', '-m', 'pip', 'install', '-q', '-e', '.', 'jax[tpu]']
  assert remote_command(run) == [
      'cd', '~/resnet_jax', '&&', 'python3', '-m', 'resnet_jax.main', '--multihost',
      f'--config={CONFIG}', '--workdir=gs://bucket/run 1',
      '--config.compilation_cache_dir=gs://bucket/xla_cache', '--mode=eval', NASTY]


def test_tpu_vm_no_setup_and_project(tmp_path):
  result = launch('-n', 'tpu-vm', '--no-setup', '--project=my proj', *TPU_ARGS, tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  [run] = [shlex.split(line) for line in result.stdout.splitlines()]
  assert run[4] == 'ssh' and '--project=my proj' in run
  assert remote_command(run)[-1] == NASTY


def test_tpu_vm_runs_exactly_what_the_dry_run_prints(tmp_path):
  printed = launch('--dry-run', 'tpu-vm', *TPU_ARGS, tmp_path=tmp_path).stdout
  result = launch('tpu-vm', *TPU_ARGS, tmp_path=tmp_path)
  assert result.returncode == 0, result.stderr
  assert [['gcloud', *argv] for argv in calls(tmp_path / 'gcloud.jsonl')] == [
      shlex.split(line) for line in printed.splitlines()]


def test_local_runs_main_from_the_repo_root_with_arguments_intact(tmp_path):
  python, log = recorder(tmp_path, 'python')
  workdir = str(tmp_path / 'work dir')
  result = launch('local', CONFIG, workdir, '--mode=eval', NASTY, '', tmp_path=tmp_path,
                  PYTHON=str(python))
  assert result.returncode == 0, result.stderr
  assert calls(log) == [['-m', 'resnet_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
                         '--mode=eval', NASTY, '']]
  assert calls(tmp_path / 'gcloud.jsonl') == []


def test_local_dry_run_prints_the_command_and_runs_nothing(tmp_path):
  python, log = recorder(tmp_path, 'python')
  result = launch('--dry-run', 'local', CONFIG, '/tmp/w', NASTY, tmp_path=tmp_path,
                  PYTHON=str(python))
  assert result.returncode == 0, result.stderr
  assert not log.exists()
  assert [shlex.split(line) for line in result.stdout.splitlines()] == [
      ['cd', str(REPO)],
      [str(python), '-m', 'resnet_jax.main', f'--config={CONFIG}', '--workdir=/tmp/w', NASTY]]


def installed_tool(name: str) -> str:
  """`name` as installed with the running interpreter (its venv's bin/, or its user scripts
  folder where user site-packages are on), never from PATH: `.venv/bin/pytest` leaves the venv's
  bin/ off PATH, and a tool a machine happens to have is not one the project's install provides."""
  folders = [os.path.dirname(sys.executable), sysconfig.get_path('scripts')]
  if site.ENABLE_USER_SITE:
    folders.append(sysconfig.get_path('scripts', sysconfig.get_preferred_scheme('user')))
  folders = list(dict.fromkeys(folders))  # A venv's first two are the same.
  for folder in folders:
    if found := shutil.which(name, path=folder):
      return found
  pytest.fail(f"no {name} in {folders}: pip install -e '.[dev]' installs it")


def test_shellcheck_is_clean():
  result = subprocess.run([installed_tool('shellcheck'), str(LAUNCH)], capture_output=True,
                          text=True, timeout=30)
  assert result.returncode == 0, result.stdout


def test_tpu_vm_workers_share_a_compilation_cache_unless_a_flag_sets_one(tmp_path):
  own = '--config.compilation_cache_dir=gs://other/cache'
  for extra, expected in (((), '--config.compilation_cache_dir=gs://bucket/xla_cache'),
                          ((own,), own)):
    printed = launch('--dry-run', 'tpu-vm', *TPU_ARGS, *extra, tmp_path=tmp_path).stdout
    run = remote_command(shlex.split(printed.splitlines()[-1]))
    assert [a for a in run if a.startswith('--config.compilation_cache_dir')] == [expected]
