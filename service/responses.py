"""An orjson response (FastAPI deprecated its own ``ORJSONResponse``)."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["REQUEST_ID_KEY", "OrjsonResponse"]

REQUEST_ID_KEY = "recsys.request_id"  # the ASGI scope key the request id is kept under


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except orjson.JSONEncodeError:
            # text orjson will not encode (a lone surrogate echoed from a request, e.g. in the name
            # of an unknown field) goes out escaped, as JSON allows, rather than as a 500
            return json.dumps(content, ensure_ascii=True, allow_nan=False, default=str).encode("ascii")
