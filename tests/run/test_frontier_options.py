"""frontier takes the shared shape options, --kv-heads and --param among them (one value each)."""

from __future__ import annotations

import pytest

from attnbench.core.errors import UsageError
from attnbench.run.frontier import FrontierRequest, _base_problem


def _req(**shape) -> FrontierRequest:
    params = shape.pop("params", None)
    return FrontierRequest("gqa", "eager", shape, params, 1 << 30, "1k", "4k", "cpu", 60.0)


def test_kv_heads_and_params_reach_the_searched_problem():
    names, base = _base_problem(_req(kv_heads=["2"], heads=["8"], params=["softcap=30"]))
    assert names == ["gqa"] and base.kv_heads == 2 and dict(base.params) == {"softcap": 30.0}


def test_a_second_value_or_an_undeclared_parameter_is_refused():
    with pytest.raises(UsageError, match="frontier takes one --heads value"):
        _base_problem(_req(heads=["8,16"]))
    with pytest.raises(UsageError, match="no parameter 'window'"):
        _base_problem(_req(params=["window=8"]))
