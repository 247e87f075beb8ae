"""The package's layers, read from its source: no import circle, models/ self-contained, no
private name imported across modules, config.py a leaf, no side effect on import."""
import ast
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'resnet_jax'
# What models/ may import besides itself (GUIDE: layers only look down).
MODELS_MAY_IMPORT = ('flax', 'jax', 'numpy', 'einops')


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
  """(module, names) of every import in the file, at any depth (function-level ones too: a
  lazy import is still a dependency)."""
  found = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found += [(alias.name, []) for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.append((node.module, [alias.name for alias in node.names]))
  return found


def package_edges() -> dict[str, set[str]]:
  """module -> the package modules it imports (`from resnet_jax import data` names a module)."""
  known = modules()
  edges = {}
  for name, path in known.items():
    targets = set()
    for module, names in imports(path):
      if not module.startswith('resnet_jax'):
        continue
      for imported in names:
        if f'{module}.{imported}' in known:
          targets.add(f'{module}.{imported}')
        else:
          targets.add(module)
      if not names:
        targets.add(module)
    edges[name] = targets - {name}
  return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = 'open'
    stack.append(node)
    for nxt in sorted(edges.get(node, ())):
      if state.get(nxt) == 'open':
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        cycle = visit(nxt)
        if cycle:
          return cycle
    stack.pop()
    state[node] = 'done'
    return None

  for node in sorted(edges):
    if node not in state:
      cycle = visit(node)
      if cycle:
        return cycle
  return None


def test_the_import_graph_has_no_circle():
  cycle = find_cycle(package_edges())
  assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_a_planted_circle():
  edges = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
  assert find_cycle(edges) == ['a', 'b', 'c', 'a']
  assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_models_import_only_models_flax_jax_and_numpy():
  bad = []
  for name, path in modules().items():
    if not name.startswith('resnet_jax.models'):
      continue
    for module, _ in imports(path):
      top = module.split('.')[0]
      inside = module == 'resnet_jax.models' or module.startswith('resnet_jax.models.')
      if top == 'resnet_jax' and not inside:
        bad.append(f'{name} imports {module}')
      elif top not in ('resnet_jax', *MODELS_MAY_IMPORT, *sys.stdlib_module_names):
        bad.append(f'{name} imports {module}')
  assert not bad, bad


def test_config_is_a_leaf():
  assert not [m for m, _ in imports(PACKAGE / 'config.py') if m.startswith('resnet_jax')]


def test_no_private_name_is_imported_from_another_module():
  bad = [f'{name}: from {module} import {imported}'
         for name, path in modules().items() for module, names in imports(path)
         if module.startswith('resnet_jax') for imported in names
         if imported.startswith('_') and not imported.startswith('__')]
  assert not bad, bad


def test_the_batch_axis_is_named_once():
  # parallel.AXIS is the mesh axis; any other module spells it through that name.
  bad = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob('*.py')
         if p.name != 'parallel.py' and ("AXIS = " in p.read_text()
                                         or "PartitionSpec('batch')" in p.read_text())]
  assert not bad, bad


def test_train_py_is_at_most_400_lines():
  lines = len((PACKAGE / 'train.py').read_text().splitlines())
  assert lines <= 400, f'resnet_jax/train.py has {lines} lines: keep the loop readable'


@pytest.mark.parametrize('module', ['resnet_jax', 'resnet_jax.models', 'resnet_jax.train'])
def test_importing_the_package_leaves_xla_flags_alone(module):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  script = f'import os, {module}; print(repr(os.environ.get("XLA_FLAGS")))'
  done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, env=env,
                        cwd=PACKAGE.parent, timeout=120)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == 'None'
