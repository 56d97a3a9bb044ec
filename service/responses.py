"""An orjson response (FastAPI deprecated its own ``ORJSONResponse``)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["REQUEST_ID_KEY", "OrjsonResponse"]

REQUEST_ID_KEY = "recsys.request_id"  # the ASGI scope key the request id is kept under


class OrjsonResponse(JSONResponse):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
