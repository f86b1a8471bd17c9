"""The documentation: README.md is a front page whose links, and those of docs/*.md and
benchmarks/README.md, all land.

Every relative link must name a file of the repository and, with `#anchor`, a heading of that
file as GitHub slugs it; the README opens with the two commands (the ones CI runs); every page
under docs/ is reachable from the README.
"""

import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && '
                '.venv/bin/python main.py --config configs/demo.py --workdir runs/demo')
TEST_COMMAND = ('python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt && '
                '.venv/bin/python -m pytest')

_FENCE = re.compile(r'^(```|~~~)')
_INLINE_CODE = re.compile(r'`[^`]*`')
_LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
_HEADING = re.compile(r'^(#{1,6})\s+(.*?)\s*#*\s*$')


def pages() -> list[str]:
  """README.md and every docs/*.md, as paths relative to the repository."""
  docs = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, 'docs', '*.md')))
  return ['README.md'] + docs


def read(page: str) -> str:
  with open(os.path.join(REPO, page), encoding='utf-8') as f:
    return f.read()


def prose_lines(text: str) -> list[str]:
  """The lines outside fenced code blocks."""
  lines, fenced = [], False
  for line in text.splitlines():
    if _FENCE.match(line.strip()):
      fenced = not fenced
      continue
    if not fenced:
      lines.append(line)
  return lines


def fenced_blocks(text: str) -> list[list[str]]:
  """The lines of each fenced code block, in order."""
  blocks, current = [], None
  for line in text.splitlines():
    if _FENCE.match(line.strip()):
      if current is None:
        current = []
      else:
        blocks.append(current)
        current = None
    elif current is not None:
      current.append(line)
  return blocks


def links(text: str) -> list[str]:
  """Targets of the markdown links outside code (fenced or inline)."""
  found = []
  for line in prose_lines(text):
    found += _LINK.findall(_INLINE_CODE.sub('', line))
  return found


def slug(heading: str) -> str:
  """GitHub's anchor of a heading: its text lowercased, punctuation dropped, spaces -> '-'."""
  text = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # a link's text
  text = text.replace('`', '').replace('*', '')
  text = re.sub(r'[^\w\- ]', '', text.strip().lower())
  return text.replace(' ', '-')


def anchors(text: str) -> set[str]:
  """Every heading's anchor; repeated headings get -1, -2, ... as on GitHub."""
  seen: dict[str, int] = {}
  result = set()
  for line in prose_lines(text):
    match = _HEADING.match(line)
    if not match:
      continue
    base = slug(match.group(2))
    count = seen.get(base, 0)
    seen[base] = count + 1
    result.add(base if count == 0 else f'{base}-{count}')
  return result


def test_slug_follows_github():
  assert slug('The demo, and what it reaches') == 'the-demo-and-what-it-reaches'
  assert slug('Matching: `pgm_match`') == 'matching-pgm_match'
  assert slug('C++ & Go') == 'c--go'
  assert slug('[Running](x.md) PGM') == 'running-pgm'
  assert anchors('# A\n```\n# not a heading\n```\n## A\n### A b\n') == {'a', 'a-1', 'a-b'}


def test_there_are_pages_to_check():
  assert len(pages()) > 5 and os.path.isfile(os.path.join(REPO, 'docs', 'new_method.md'))


@pytest.mark.parametrize('page', pages() + ['benchmarks/README.md'])
def test_every_relative_link_lands(page):
  text = read(page)
  broken = []
  for target in links(text):
    if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # https:, mailto:, ...
      continue
    path, _, anchor = target.partition('#')
    file = os.path.normpath(os.path.join(REPO, os.path.dirname(page), path)) if path else (
        os.path.join(REPO, page))
    outside = os.path.relpath(file, REPO).split(os.sep)[0] == '..'
    if outside or not os.path.exists(file):
      broken.append(f'{target}: no such file in the repository')
    elif anchor and (not file.endswith('.md') or anchor not in anchors(read(file))):
      broken.append(f'{target}: no heading with that anchor')
  assert not broken, f'{page}: {broken}'


def test_the_readme_opens_with_the_two_commands():
  blocks = fenced_blocks(read('README.md'))
  assert blocks, 'README.md has no fenced block'
  assert [line.strip() for line in blocks[0] if line.strip()] == [DEMO_COMMAND, TEST_COMMAND]
  # The commands name files that exist, and CI runs the test command as written.
  for name in ('requirements.txt', 'requirements-test.txt', 'main.py',
               os.path.join('configs', 'demo.py')):
    assert os.path.isfile(os.path.join(REPO, name)), name
  with open(os.path.join(REPO, '.ci', 'run'), encoding='utf-8') as f:
    ci = f.read()
  assert TEST_COMMAND.replace('pip install -r', 'pip install -q -r') in ci


def test_every_docs_page_is_linked_from_the_readme():
  linked = {os.path.normpath(target.partition('#')[0]) for target in links(read('README.md'))}
  missing = [page for page in pages()[1:] if page not in linked]
  assert not missing, f'docs pages the README does not link: {missing}'
