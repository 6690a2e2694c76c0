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


def recommend(results, max_error: float | None = None, memory_budget: float | None = None) -> list[dict]:
    """The dispatch table of `attnbench recommend`: results files (paths), or records as read by
    attnbench.core.results.read, to a list of {shape, seq, mode, backend, variant, runner_up,
    margin, margin_ci, tie, note}. memory_budget in bytes. Imports no torch."""
    from attnbench.gate.recommend import recommend as _recommend
    from attnbench.gate.recommend import recommend_files

    items = list(results)
    if items and all(isinstance(r, dict) for r in items):
        picks = _recommend(items, max_error, memory_budget)
    else:
        picks = recommend_files(items, max_error, memory_budget)[0]
    return [p.as_json() for p in picks]
