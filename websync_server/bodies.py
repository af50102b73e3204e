"""A request body's JSON object, parsed and checked the same way for the API and the web page.

JSON may spell a lone surrogate (``"\\ud800"``): Python's parser takes it into a
``str`` that no UTF-8 encode accepts, so a password hashed or a name stored
later failed with a 500.  Such a body is refused here, where every caller's
JSON comes in, as is one nested past the interpreter's recursion limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._exceptions import InvalidRequest, UnsupportedMediaType

#: ``\\uD800``-``\\uDFFF`` written out in the JSON text: the only way a lone surrogate gets in
#: (raw bytes that are not UTF-8 fail the parse itself).  Pairs are fine: the parser joins them.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def require_json_type(content_type: str) -> None:
    """Refuse a body that does not say it is JSON.

    A browser sends a cross-site form post as ``text/plain`` or a form type
    without asking the server first; requiring ``application/json`` makes it
    ask (CORS preflight), which this server never grants.
    """
    if content_type.partition(";")[0].strip().lower() != "application/json":
        raise UnsupportedMediaType("this call takes a JSON body: send Content-Type: application/json")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """*body* as a JSON object; `InvalidRequest` for anything else."""
    try:
        data = json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise InvalidRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("the body's JSON is nested too deep") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object")
    if _SURROGATE_ESCAPE.search(body) and not _encodable(data):
        raise InvalidRequest("the body's JSON holds a string that is not Unicode text (a lone surrogate)")
    return data


def _encodable(value: object) -> bool:
    """Whether every string in *value* (keys too) can be written as UTF-8."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True
