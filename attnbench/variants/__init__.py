"""Every variant family, imported explicitly: importing a module registers its variants."""

import os

from attnbench.variants import exact
from attnbench.variants import flash
from attnbench.variants import positional
from attnbench.variants import sparse
from attnbench.variants import lsh
from attnbench.variants import linear
from attnbench.variants import vision
from attnbench.variants import graph
from attnbench.variants import peers  # noqa: F401
from attnbench.distributed import variant as _ring  # noqa: F401  (variant `ring`)
from attnbench.variants.triton_backends import register_triton_backends

register_triton_backends()

if os.environ.get("ATTNBENCH_TEST_BACKENDS") == "1":
    from attnbench.variants.testing import register_test_backends

    register_test_backends()
