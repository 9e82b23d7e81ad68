"""Which copy loop the relay runs: the native extension, or its pure-Python twin.

`core` is `bottle._ptyrelay` when it is built, else `bottle._ptyrelay_py` (the same API);
`hub` (a session holder's loop, `Hub`) and `client` (an attach client's loop, `Attach`) are
the same native module, else `bottle._hub_py` and `bottle._attach_py`.
BOTTLE_NO_EXTENSIONS=1 forces the twin; BOTTLE_REQUIRE_EXTENSION=1 makes this import fail
instead of falling back to it (setting both is an error too).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__all__ = ["IMPLEMENTATION", "client", "core", "hub"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if TYPE_CHECKING:
    from bottle import _ptyrelay_py as core
elif _flag("BOTTLE_NO_EXTENSIONS"):
    if _flag("BOTTLE_REQUIRE_EXTENSION"):
        raise ImportError(
            "BOTTLE_REQUIRE_EXTENSION and BOTTLE_NO_EXTENSIONS are both set: the native relay "
            "is required and forbidden at once; unset one of them"
        )
    from bottle import _ptyrelay_py as core
else:
    try:
        from bottle import _ptyrelay as core
    except ImportError as exc:
        if _flag("BOTTLE_REQUIRE_EXTENSION"):
            raise ImportError(
                f"BOTTLE_REQUIRE_EXTENSION is set but the native relay bottle._ptyrelay "
                f"cannot be imported: {exc}"
            ) from exc
        from bottle import _ptyrelay_py as core

IMPLEMENTATION: str = "pure" if core.__name__.endswith("_py") else "native"

if TYPE_CHECKING:
    from bottle import _attach_py as client
    from bottle import _hub_py as hub
elif IMPLEMENTATION == "native":
    hub = core
    client = core
else:
    from bottle import _attach_py as client
    from bottle import _hub_py as hub
