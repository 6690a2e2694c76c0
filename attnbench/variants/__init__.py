"""Every variant family, imported explicitly: importing a module registers its variants."""

import os

from . import exact, flash, positional, sparse, lsh, linear, vision, graph, peers  # noqa: F401
from ..distributed import variant as _ring  # noqa: F401  (variant `ring`)
from .triton_backends import register_triton_backends

register_triton_backends()

if os.environ.get("ATTNBENCH_TEST_BACKENDS") == "1":
    from .testing import register_test_backends

    register_test_backends()
