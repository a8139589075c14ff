"""Every failure leaves the server as an OpenAI-style JSON error with the right status code.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}

    400  invalid parameters or JSON, prompt longer than the context     type invalid_request_error
    401  missing or wrong API key                                        type authentication_error
    404  unknown model or route                                          type not_found_error
    405  wrong method on a known route                                   type invalid_request_error
    408  request head or body not received in time (limits.py)          type invalid_request_error
    413  request body over the size limit (limits.py)                    type invalid_request_error
    429  the engine's queue is full (Retry-After: 1)                     type rate_limit_error
    503  too many open connections (limits.py; Retry-After: 1)           type server_overloaded
    500  a bug in r1kit (never a client mistake)                         type server_error

`install_error_handlers(app)` replaces FastAPI's handlers (whose 422 bodies look nothing like OpenAI's) so that
clients written for OpenAI parse our errors, and a bad request never takes the server down.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from r1kit.errors import UserError

log = logging.getLogger("r1kit.server")

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
          413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_error", 503: "server_overloaded"}


class APIError(Exception):
    """Raised anywhere in a handler to answer with an OpenAI-style error."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None,
               type: str | None = None) -> dict:
    return {"error": {"message": message, "param": param, "code": code,
                      "type": type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")}}


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code, err.type), status_code=err.status,
                        headers=err.headers)


def from_user_error(e: Exception) -> APIError:
    """A UserError / ValueError raised by the engine or SamplingParams for a bad request -> 400."""
    return APIError(400, str(e) or type(e).__name__, param=getattr(e, "param", None))


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "json-or-python"}


def _loc(loc) -> str | None:
    """pydantic's error location as a dotted param name, without union-member tags ("list[str]", "str", ...)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    parts = [p for p in parts if p not in _TYPE_TAGS and not any(ch in p for ch in "[]()<> ,")]
    return ".".join(parts) or None


def _validation_message(errors: list[dict]) -> str:
    msgs = []
    for e in errors[:5]:
        where = _loc(e.get("loc", ()))
        if e.get("type") == "json_invalid":
            msgs.append(f"the request body is not valid JSON ({e.get('ctx', {}).get('error', e.get('msg'))})")
        elif e.get("type") == "missing":
            msgs.append(f"{where} is required")
        else:
            msgs.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return "; ".join(msgs) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError):
        errors = list(e.errors())
        param = _loc(errors[0].get("loc", ())) if errors else None
        return error_response(APIError(400, _validation_message(errors) or "invalid request", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        message = str(e.detail)
        if e.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
        elif e.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        return error_response(APIError(e.status_code, message, headers=getattr(e, "headers", None)))

    @app.exception_handler(UserError)
    async def _user_error(request: Request, e: UserError):
        return error_response(from_user_error(e))

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(APIError(500, f"internal server error ({type(e).__name__}); this is a bug in r1kit",
                                       code="internal_error"))
