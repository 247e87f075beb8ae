"""The documentation stays short where it should be, generated where it can be, and linked right."""
import pathlib
import re

import pytest

from resnet_jax import config as config_lib
from resnet_jax.configs import reference

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
DOCS = ROOT / 'docs'
PAGES = [README, *sorted(DOCS.glob('*.md'))]

_FENCE = re.compile(r'^(```|~~~).*?^\1', re.M | re.S)
_CODE_SPAN = re.compile(r'(`+).+?\1', re.S)
_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')


def _flatten(config, prefix=''):
  for key, value in config.items():
    path = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from _flatten(value, f'{path}.')
    else:
      yield path


def _relative_links(text: str) -> list[str]:
  """Targets of Markdown links and images outside code, less URLs and in-page anchors."""
  text = _CODE_SPAN.sub('', _FENCE.sub('', text))
  targets = []
  for target in _LINK.findall(text):
    if re.match(r'[a-z][a-z0-9+.-]*:', target, re.I) or target.startswith('#'):
      continue
    targets.append(target.split('#', 1)[0])
  return targets


def test_readme_is_short():
  lines = README.read_text(encoding='utf-8').splitlines()
  assert len(lines) <= 150, (
      f'README.md has {len(lines)} lines (at most 150): move details into a docs/ page and link it')


def test_config_reference_is_current():
  generated = reference.markdown()
  written = (DOCS / 'config.md').read_text(encoding='utf-8')
  assert written == generated, (
      'docs/config.md differs from resnet_jax/config.py; regenerate it with '
      f'`{reference.REGENERATE}`')


def test_config_reference_names_every_field():
  generated = reference.markdown()
  missing = [path for path in _flatten(config_lib.base_config())
             if f'| `{path}` |' not in generated]
  assert not missing, f'fields of base_config() missing from the reference: {missing}'


_SAMPLE_CONFIG = """\"\"\"A sample config module.\"\"\"
import ml_collections
from ml_collections import config_dict


def base_config():
  c = ml_collections.ConfigDict()
  c.seed = 0  # The root of every key.
  # Not attached: a blank line follows.

  # Two comment lines
  # directly above.
  c.batch_size = (
      128)  # And a trailing one.
  # The model section.
  c.model = ml_collections.ConfigDict()
  c.model.act = config_dict.placeholder(str)  # 'relu' | 'selu'
  c.lock()
  return c
"""


def test_config_reference_reads_the_source(tmp_path):
  path = tmp_path / 'config.py'
  path.write_text(_SAMPLE_CONFIG)
  docstring, fields, sections = reference.read_fields(str(path))
  assert docstring == 'A sample config module.'
  assert [(f.path, f.default, f.meaning) for f in fields] == [
      ('seed', '0', 'The root of every key.'),
      ('batch_size', '128', 'Two comment lines directly above. And a trailing one.'),
      ('model.act', 'unset (str)', "'relu' | 'selu'"),
  ]
  assert sections == {'model': 'The model section.'}
  text = reference.markdown(str(path))
  assert "| `model.act` | `unset (str)` | 'relu' \\| 'selu' |" in text
  assert text.index('## Top level') < text.index('## `config.model`')


def test_every_model_is_in_the_model_page():
  from resnet_jax import models  # Here, so the other checks need no model code.
  text = (DOCS / 'models.md').read_text(encoding='utf-8')
  listed = set(re.findall(r'^\|\s*`?([A-Za-z0-9_]+)`?\s*\|', text, re.M))
  missing = [name for name in models.list_models() if name not in listed]
  assert not missing, f'registered models missing from the table in docs/models.md: {missing}'


def test_the_model_page_twins_are_the_registered_ones():
  # The twin column restates each registration's torch_twin: they must not drift apart.
  from resnet_jax import models
  text = (DOCS / 'models.md').read_text(encoding='utf-8')
  rows = [line.split('|') for line in text.splitlines() if line.count('|') == 8]
  header = next(cells for cells in rows if cells[1].strip() == 'model')
  column = [c.strip() for c in header].index('twin')
  wrong = {cells[1].strip(): cells[column].strip() for cells in rows
           if cells[1].strip() in models.list_models()
           and cells[column].strip() != (models.model_spec(cells[1].strip())['torch_twin'] or '')}
  assert not wrong, f'docs/models.md twin column differs from model_spec: {wrong}'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_exist(page):
  broken = [target for target in _relative_links(page.read_text(encoding='utf-8'))
            if not (page.parent / target).exists()]
  assert not broken, f'{page.relative_to(ROOT)} links to missing files: {broken}'


def test_link_finder():
  text = ('[a](docs/x.md) ![f](figures/y.png#z) [u](https://example.com) [h](#top) '
          '`[c](nowhere.md)`\n```\n[d](nowhere.md)\n```\n')
  assert _relative_links(text) == ['docs/x.md', 'figures/y.png']
