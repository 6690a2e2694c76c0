"""Every variant family, imported explicitly: importing a module registers its variants."""

from . import exact, flash  # noqa: F401
