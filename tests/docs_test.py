"""The documentation: README.md is a front page whose links, and those of docs/*.md and
benchmarks/README.md, all land.

Every relative link must name a file of the repository and, with `#anchor`, a heading of that
file as GitHub slugs it; the README opens with the two commands (the ones CI runs); every page
under docs/ is reachable from the README.

The repository points only inside itself: no tracked file names the specification files that
lived beside it (the methods are described in docs/mbccm.md and docs/pgm.md), and every pointer
from code, configs, tests and benchmarks into the documentation lands. Code points at a section
one way, `docs/<page>.md, "<Section>"` (several: `, "<A>", "<B>"`) with the heading's text, or
`docs/<page>.md, quirk <n>` for item n of the page's "Reference quirks"; a bare
`docs/<page>.md` names the page.
"""

import glob
import os
import re
import subprocess

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


# Names of files outside the repository that its text once pointed to; a user has none of them.
# Spelled in pieces so that this file does not contain them.
OUTSIDE = tuple(name + '.md' for name in ('SPEC', 'PGM', 'PCLHD')) + ('..' + '/shared',)
CODE_SUFFIXES = ('.py', '.sh', '.txt', '.ini', '.cfg')
TEXT_SUFFIXES = CODE_SUFFIXES + ('.md',)
_UNTRACKED = {'.git', '.venv', 'runs', 'data', '.ref', '.whl', '__pycache__', '.pytest_cache'}

# docs/<page>.md, then optionally #anchor (not the code convention: reported), or one of
# `, quirk <n>` and `, "<Section>"[, "<Section>" ...]`.
_POINTER = re.compile(r'docs/([\w-]+)\.md\b(#[\w-]*)?'
                      r'(?:, (?:quirk (\d+)|("[^"]+"(?:, "[^"]+")*)))?')
# Other ways of naming a section after a page: `docs/x.md "S"`, `docs/x.md ("S")`, `docs/x.md: s`.
_NEAR_MISS = re.compile(r'docs/[\w-]+\.md(?:\s*\(\s*"|\s+"|: )')
_CONTINUATION = re.compile(r'[ \t]*\n[ \t]*(?:#+[ \t]*)?')  # a line break, a comment's '#'
_QUIRK_ITEM = re.compile(r'^(\d+)\. ')


def tracked_files(suffixes: tuple[str, ...]) -> list[str]:
  """The repository's files with those suffixes: git's list, or the tree without what it ignores."""
  try:
    listed = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, capture_output=True,
                            check=True).stdout.decode('utf-8').split('\0')
  except (OSError, subprocess.CalledProcessError):
    listed = []
    for parent, folders, files in os.walk(REPO):
      folders[:] = [f for f in folders if f not in _UNTRACKED]
      listed += [os.path.relpath(os.path.join(parent, f), REPO) for f in files]
  return sorted(name for name in listed
                if name.endswith(suffixes) and os.path.isfile(os.path.join(REPO, name)))


def headings(text: str) -> set[str]:
  """Every heading's text, as written and without its backticks."""
  found = set()
  for line in prose_lines(text):
    match = _HEADING.match(line)
    if match:
      found |= {match.group(2), match.group(2).replace('`', '')}
  return found


def quirks(text: str) -> set[int]:
  """The item numbers of the page's numbered list under its "Reference quirks" heading."""
  numbers, inside = set(), False
  for line in prose_lines(text):
    match = _HEADING.match(line)
    if match:
      inside = match.group(2) == 'Reference quirks'
    elif inside and _QUIRK_ITEM.match(line):
      numbers.add(int(_QUIRK_ITEM.match(line).group(1)))
  return numbers


def pointer_errors(text: str) -> list[str]:
  """What is wrong with the pointers into docs/ of one file's text (lines joined)."""
  joined = _CONTINUATION.sub(' ', text)
  errors = [f'{m.group(0)!r}: write docs/<page>.md, "<Section>"'
            for m in _NEAR_MISS.finditer(joined)]
  for match in _POINTER.finditer(joined):
    page, anchor, quirk, sections = match.groups()
    path = os.path.join('docs', page + '.md')
    if not os.path.isfile(os.path.join(REPO, path)):
      errors.append(f'{match.group(0)!r}: no {path}')
      continue
    if anchor:
      errors.append(f'{match.group(0)!r}: write docs/<page>.md, "<Section>", not an anchor')
    if quirk and int(quirk) not in quirks(read(path)):
      errors.append(f'{match.group(0)!r}: {path} has no quirk {quirk} under "Reference quirks"')
    for section in re.findall(r'"([^"]+)"', sections or ''):
      if section not in headings(read(path)):
        errors.append(f'{match.group(0)!r}: {path} has no heading "{section}"')
  return errors


def test_pointer_errors_reads_the_convention():
  assert not pointer_errors('docs/pgm.md, "Stage 1", "Stage 2" and docs/mbccm.md, quirk 3.')
  assert not pointer_errors('(docs/pgm.md,\n  # "Matching: pgm_match"); see docs/usage.md.')
  assert not pointer_errors('docs/mbccm.md, "Step 2:\ncluster"')  # a docstring, rewrapped
  assert len(pointer_errors('docs/pgm.md, "No such section"')) == 1
  assert len(pointer_errors('docs/pgm.md, quirk 99')) == 1
  assert len(pointer_errors('docs/nowhere.md')) == 1
  assert len(pointer_errors('docs/pgm.md#stage-1')) == 1
  assert len(pointer_errors('docs/pgm.md "Stage 1"; docs/pgm.md ("Stage 1")')) == 2
  assert quirks(read('docs/pgm.md')) == set(range(1, 14))


def test_nothing_points_outside_the_repository():
  found = [f'{name}: {needle}' for name in tracked_files(TEXT_SUFFIXES)
           for needle in OUTSIDE if needle in read(name)]
  assert not found, found


def test_every_pointer_from_code_into_the_docs_lands():
  errors = [f'{name}: {error}' for name in tracked_files(CODE_SUFFIXES)
            if name != os.path.relpath(__file__, REPO) for error in pointer_errors(read(name))]
  assert not errors, errors
