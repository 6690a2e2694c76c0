"""attnbench: benchmark and profile the attention mechanisms of LLMs and vision transformers.

    >>> import torch, attnbench
    >>> q = k = v = torch.randn(1, 8, 128, 64)
    >>> out = attnbench.attend(q, k, v, variant="gqa", backend="sdpa")
"""

__version__ = "0.1.0"


def attend(*args, **kwargs):
    from attnbench.api import attend as _attend

    return _attend(*args, **kwargs)


attend.__doc__ = "See attnbench.api.attend."
