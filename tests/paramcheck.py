"""Reading a parameter refusal as a user reads it: the one line ``ParamsError`` gives."""

from __future__ import annotations

import pytest

from tasks.params import ParamsError, parse_params


def problems(**params) -> str:
    """The refusal of ``params``, which must be refused."""
    with pytest.raises(ParamsError) as err:
        parse_params(params)
    return str(err.value)
