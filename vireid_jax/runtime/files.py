"""Writing a run's files on a local disk or a bucket (`gs://...`) alike, through etils.epath
(as orbax and TFDS do).

Each write goes to a temporary name first and is renamed into place, so a reader (or a crash)
never sees half a report; on object stores the rename is a copy, which is still all-or-nothing.
"""

import io
import os
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]


def path(location: PathLike) -> epath.Path:
  """`location` as an epath.Path: local paths made absolute, URLs (gs://...) kept."""
  location = os.fspath(location)
  if '://' not in location:
    location = os.path.abspath(os.path.expanduser(location))
  return epath.Path(location)


def write_bytes(location: PathLike, data: bytes) -> epath.Path:
  target = path(location)
  target.parent.mkdir(parents=True, exist_ok=True)
  temporary = target.parent / f'.{target.name}.tmp-{os.getpid()}'
  temporary.write_bytes(data)
  temporary.replace(target)  # atomic on a local disk
  return target


def write_text(location: PathLike, text: str) -> epath.Path:
  return write_bytes(location, text.encode('utf-8'))


def read_text(location: PathLike) -> str:
  return path(location).read_text(encoding='utf-8')


def save_figure(figure, location: PathLike, **savefig_kwargs) -> epath.Path:
  """A matplotlib figure as a PNG file."""
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png', **savefig_kwargs)
  return write_bytes(location, buffer.getvalue())
