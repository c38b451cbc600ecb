"""`OPTIONS` on paths served by more than one handler: `Allow` lists every method of the path.

Litestar makes an `OPTIONS` handler when a path's first handler is registered and keeps it when
more handlers join the path, so its `Allow` would list only the first handler's methods
(`GET, OPTIONS` for `/v1/connections/{id}`, which also takes `DELETE`). Registered first, this
handler takes that place and reads the methods of the route as finally built.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.status_codes import HTTP_204_NO_CONTENT

__all__ = ["allowed_methods"]


@route(
    ["/connections/{connection_id:uuid}", "/events/{event_id:str}"],
    http_method=[HttpMethod.OPTIONS],
    include_in_schema=False,
    sync_to_thread=False,
)
def allowed_methods(request: Request[Any, Any, Any]) -> Response[None]:
    template = request.scope.get("path_template")
    methods = next((r.methods for r in request.app.routes if r.path_format == template), {"OPTIONS"})
    return Response(content=None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": ", ".join(sorted(methods))})
