"""Runs main.py on a disk that fails for some checkpoints:
`python tests/failing_disk.py write|read PATTERN main.py-arguments...`.

PATTERN is a regular expression searched in the TensorStore spec of each array (its path and
the array's name).
write: every array write whose spec matches PATTERN fails as TensorStore fails on
  a full disk (a ValueError carrying `os_error_code='28'`), e.g. PATTERN '/checkpoints/best/':
  `latest` fits, `best` does not.
read: every array read whose spec matches PATTERN fails with an I/O error (a disk going bad).
The failure starts inside orbax's coroutines, where the real one starts, after the other
arrays' reads or writes are under way: orbax's threads and event loops leave behind what they
leave behind on a real failing disk.
"""

import asyncio
import os
import re
import runpy
import sys

from orbax.checkpoint._src.serialization import serialization


def _inject(direction: str, pattern: str) -> None:
  if direction == 'write':
    real_write = serialization.async_serialize_from_host

    async def full_disk(rslices_on_host, tensorstore_spec, *args, **kwargs):
      if re.search(pattern, str(tensorstore_spec)):
        await asyncio.sleep(0.01)
        raise ValueError(
            f'RESOURCE_EXHAUSTED: Error writing in OCDBT database at local file '
            f'"{tensorstore_spec}": Failed writing: [OS error 28: No space left on device] '
            f"[os_error_code='28']")
      return await real_write(rslices_on_host, tensorstore_spec, *args, **kwargs)

    serialization.async_serialize_from_host = full_disk
  elif direction == 'read':
    real_read = serialization.async_deserialize

    async def bad_disk(user_sharding, tensorstore_spec, *args, **kwargs):
      if re.search(pattern, str(tensorstore_spec)):
        await asyncio.sleep(0.01)
        raise ValueError(
            f'DATA_LOSS: Error reading local file "{tensorstore_spec}": '
            f"[OS error 5: Input/output error] [os_error_code='5']")
      return await real_read(user_sharding, tensorstore_spec, *args, **kwargs)

    serialization.async_deserialize = bad_disk
  else:
    raise SystemExit(f'usage: {sys.argv[0]} write|read PATTERN main.py-arguments...')


def main():
  _inject(sys.argv[1], sys.argv[2])
  main_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         'main.py')
  sys.argv = [main_py] + sys.argv[3:]
  sys.path.insert(0, os.path.dirname(main_py))
  runpy.run_path(main_py, run_name='__main__')


if __name__ == '__main__':
  main()
