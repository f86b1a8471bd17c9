"""Test set-up shared by every test file.

Eight virtual CPU devices let the data-parallel code run sharded on any machine; the flag must
be set before jax is first imported.
"""

import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
