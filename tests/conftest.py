"""Test set-up shared by every test file.

Eight virtual CPU devices let the data-parallel code run sharded on any machine; the flag must
be set before jax is first imported, and it reaches the processes tests start. A compilation
cache shared by the whole session (its test processes under pytest-xdist, and the processes
tests start) compiles each train step once, however many trainers a test builds.
"""

import os
import shutil
import sys
import tempfile

# Unoptimised CPU code (LLVM's backend level 0; XLA's own passes all run) compiles about twice
# as fast, and compiling is most of what these tiny tests cost.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 '
                                   '--xla_backend_optimization_level=0')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_CACHE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='vireid_jax_test_compilation_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _CACHE:
    shutil.rmtree(_CACHE, ignore_errors=True)
