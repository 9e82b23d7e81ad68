"""`--secret-env NAME`: the values, read from bottle's own environment."""

from __future__ import annotations

import os
from collections.abc import Sequence

from bottle._validate import env_name
from bottle.errors import InvalidInputError


def from_environment(names: Sequence[str]) -> dict[str, str]:
    """Each name's value in this process's environment; a name that is not set is an error."""
    out = {}
    for name in names:
        env_name(name)  # first: the message below shows the name raw
        value = os.environ.get(name)
        if value is None:
            raise InvalidInputError(f"--secret-env {name}: {name} is not set in the environment")
        out[name] = value
    return out
