"""The config-field reference, generated from the source of `resnet_jax/config.py`.

Each `c.FIELD = default` / `c.SECTION.FIELD = default` assignment of `base_config()` becomes a
row (field, default, meaning); the meaning is the comment lines directly above the assignment
and its trailing comment. Reading the source rather than a built ConfigDict keeps the comments,
so the reference cannot drift from the file: `tests/test_docs.py` checks `docs/config.md`
against it.

  python -m resnet_jax.configs.reference                          # print the Markdown
  python -m resnet_jax.configs.reference --write docs/config.md   # regenerate the page

Imports nothing of the package: config.py is read by its path, beside this folder.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import os
import tokenize

CONFIG_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'config.py')
FUNCTION = 'base_config'
TOP_LEVEL = ''  # The section name of fields set directly on the root ConfigDict.
REGENERATE = 'python -m resnet_jax.configs.reference --write docs/config.md'


@dataclasses.dataclass(frozen=True)
class Field:
  section: str  # TOP_LEVEL or the section's name ('model', 'dataset', ...).
  name: str
  default: str  # As written in the source, placeholders as 'unset (TYPE)'.
  meaning: str  # The comments, joined into one line.

  @property
  def path(self) -> str:
    return f'{self.section}.{self.name}' if self.section else self.name


def _comments(source: str) -> dict[int, tuple[str, bool]]:
  """Line number -> (comment text without '#', whether the line holds nothing but it)."""
  comments = {}
  lines = source.splitlines()
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      row, col = tok.start
      alone = not lines[row - 1][:col].strip()
      comments[row] = (tok.string.lstrip('#').strip(), alone)
  return comments


def _attribute_path(node: ast.expr) -> list[str] | None:
  """`c.dataset.augment` -> ['c', 'dataset', 'augment']; None for anything else."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  parts.append(node.id)
  return parts[::-1]


def _is_config_dict(node: ast.expr) -> bool:
  """`ml_collections.ConfigDict()` or `ConfigDict()`: a section, not a field."""
  return (isinstance(node, ast.Call) and not node.args and not node.keywords and
          (_attribute_path(node.func) or [''])[-1] == 'ConfigDict')


def _default(source: str, node: ast.expr) -> str:
  """The default as written; `config_dict.placeholder(str)` -> 'unset (str)'."""
  if (isinstance(node, ast.Call) and (_attribute_path(node.func) or [''])[-1] == 'placeholder'
      and node.args):
    return f'unset ({ast.get_source_segment(source, node.args[0])})'
  return ' '.join(ast.get_source_segment(source, node).split())


def _leading_comment(comments: dict[int, tuple[str, bool]], line: int) -> list[str]:
  """The comment-only lines directly above `line`, top to bottom."""
  block = []
  row = line - 1
  while row in comments and comments[row][1]:
    block.append(comments[row][0])
    row -= 1
  return block[::-1]


def read_fields(path: str = CONFIG_PATH) -> tuple[str, list[Field], dict[str, str]]:
  """(config.py's module docstring, the fields of base_config() in source order, each
  section's own comment)."""
  with open(path, encoding='utf-8') as f:
    source = f.read()
  tree = ast.parse(source)
  comments = _comments(source)
  function = next((node for node in tree.body
                   if isinstance(node, ast.FunctionDef) and node.name == FUNCTION), None)
  if function is None:
    raise ValueError(f'{path} defines no {FUNCTION}()')
  root = None
  fields, sections = [], {}
  for statement in function.body:
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
      continue
    target, value = statement.targets[0], statement.value
    if isinstance(target, ast.Name) and _is_config_dict(value):
      root = target.id
      continue
    parts = _attribute_path(target)
    if root is None or parts is None or parts[0] != root or len(parts) not in (2, 3):
      continue
    meaning = _leading_comment(comments, statement.lineno)
    trailing = comments.get(statement.end_lineno)
    if trailing and not trailing[1]:
      meaning.append(trailing[0])
    text = ' '.join(meaning)
    if _is_config_dict(value):
      sections[parts[1]] = text
      continue
    section, name = (TOP_LEVEL, parts[1]) if len(parts) == 2 else (parts[1], parts[2])
    fields.append(Field(section, name, _default(source, value), text))
  return ast.get_docstring(tree) or '', fields, sections


def _cell(text: str) -> str:
  """Table-cell safe: no line breaks, pipes escaped."""
  return ' '.join(text.split()).replace('|', '\\|')


def _code(text: str) -> str:
  return f'`{_cell(text)}`' if text else ''


def markdown(path: str = CONFIG_PATH) -> str:
  """The reference page: one table per section (field, default, meaning)."""
  docstring, fields, section_notes = read_fields(path)
  order = []
  for field in fields:
    if field.section not in order:
      order.append(field.section)
  order.sort(key=lambda section: section != TOP_LEVEL)  # Top-level fields first; stable.
  out = [
      '# Config fields',
      '',
      f'<!-- Generated from resnet_jax/config.py by `{REGENERATE}`; do not edit by hand. -->',
      '',
      'Every training config starts from `resnet_jax.config.base_config()`; any field can be',
      'overridden on the command line (`--config.dataset.augment=cifar`). The meaning column is',
      "the comment beside the field in `resnet_jax/config.py`; an unset default means the part",
      "that uses the field chooses (the registered model's own default, the optimizer's).",
      '',
  ]
  if docstring:
    out += [docstring.strip(), '']
  for section in order:
    title = 'Top level' if section == TOP_LEVEL else f'`config.{section}`'
    out += [f'## {title}', '']
    if section_notes.get(section):
      out += [section_notes[section], '']
    out += ['| field | default | meaning |', '|---|---|---|']
    for field in fields:
      if field.section == section:
        out.append(f'| {_code(field.path)} | {_code(field.default)} | {_cell(field.meaning)} |')
    out.append('')
  return '\n'.join(out)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--write', metavar='PATH', help='write the Markdown to PATH (else print)')
  args = parser.parse_args(argv)
  text = markdown()
  if args.write:
    with open(args.write, 'w', encoding='utf-8') as f:
      f.write(text)
  else:
    print(text, end='')


if __name__ == '__main__':
  main()
