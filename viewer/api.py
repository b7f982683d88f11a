"""The viewer's read-only JSON API, served by the viewer's own server under ``/api/v1``.

=========================================  ===============================================
``GET /api/v1/runs``                       runs, newest first: ``filter=`` (the viewer's
                                           filter language), ``experiment=``, ``status=``,
                                           ``tag=`` (each repeatable), ``text=``,
                                           ``metrics=loss,acc`` (their last values),
                                           ``limit=`` (default 100, at most 10,000), ``offset=``
``GET /api/v1/runs/{id}``                  one run: its row, params (dotted names), events
                                           and metric summary
``GET /api/v1/runs/{id}/metrics``          one metric, ``key=`` (required), downsampled as
                                           the charts are: ``points=`` (default 1,000, at most
                                           20,000) is the most points per series, each pixel
                                           bucket giving its lowest and highest point;
                                           ``x=step|wall|relative``
``GET /api/v1/queue``                      every queued and running run of the machine
``GET /api/v1/gpus``                       each GPU: utilisation, memory, holders, reserved
=========================================  ===============================================

Every answer is JSON. Errors too: ``{"error": "<kind>", "message": "..."}`` with
400 for a bad argument (a filter that does not parse names the token and its
position), 401 without credentials where the viewer needs them, 404 for an unknown
run or path, 503 while the store stays busy past the viewer's short lock wait.

**Authentication** is the viewer's: none on a loopback address by default; with
``--basic-auth`` either the login cookie a browser got from the viewer's login page
or HTTP basic credentials (``curl -u user:PASSWORD``; any user name for a plain
password, as the login page accepts). With an OAuth provider, the login cookie only.

**Safety.** Query arguments never reach SQL as text: filters compile through the
filter language shared with the pages (``store.queries.filters``, values as ``?``
parameters), and everything else is a whitelisted name or a number. Reads run on
the viewer's read pool, never on the server's event loop, with the viewer's lock
wait, so a request never stalls the pages or holds the store's writers long.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import hmac
import json
import math
import os
from pathlib import Path
from typing import Any

from tornado.web import HTTPError, RequestHandler

from notebook_exp.exceptions import ConfigError, StoreError

__all__ = ["API_PREFIX", "ApiError", "api_patterns"]

API_PREFIX = "/api/v1"
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
DEFAULT_POINTS = 1_000
MAX_POINTS = 20_000
REALM = "notebook_exp viewer"


class ApiError(Exception):
    """An answer other than 200: its HTTP status, kind and message."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


def api_patterns(store_path: Path, basic_auth: str | None, authenticated: bool) -> list[tuple]:
    """The tornado routes of the API, for ``panel.serve(extra_patterns=...)``."""
    options = {"store_path": store_path, "basic_auth": basic_auth, "authenticated": authenticated}
    return [
        (rf"{API_PREFIX}/runs/?", RunsHandler, options),
        (rf"{API_PREFIX}/runs/([^/]+)/metrics/?", MetricsHandler, options),
        (rf"{API_PREFIX}/runs/([^/]+)/?", RunHandler, options),
        (rf"{API_PREFIX}/queue/?", QueueHandler, options),
        (rf"{API_PREFIX}/gpus/?", GpusHandler, options),
        (rf"{API_PREFIX}(/.*)?", NotFoundHandler, options),
    ]


# -- the handlers' common part ---------------------------------------------------------------
class ApiHandler(RequestHandler):
    """Authenticates, reads off the event loop, answers JSON (errors included)."""

    def initialize(self, store_path: Path, basic_auth: str | None, authenticated: bool) -> None:
        self.store_path = store_path
        self.basic_auth = basic_auth
        self.authenticated = authenticated

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        if self.authenticated and not self._allowed():
            self.set_header("WWW-Authenticate", f'Basic realm="{REALM}"')
            self._fail(ApiError(401, "Unauthorized", "this viewer needs a login: log in on its page, or pass "
                                                     "HTTP basic credentials (curl -u user:PASSWORD)"))

    def _allowed(self) -> bool:
        if self.get_secure_cookie("user"):
            return True
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Basic ") or not self.basic_auth:
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return credentials_match(self.basic_auth, user, password)

    async def answer(self, work) -> None:
        """Run ``work()`` on the viewer's read pool and answer its result as JSON."""
        from .background import read_pool

        try:
            body = await asyncio.get_running_loop().run_in_executor(read_pool(), work)
        except ApiError as exc:
            return self._fail(exc)
        except ConfigError as exc:  # FilterError and other bad arguments
            return self._fail(ApiError(400, type(exc).__name__, str(exc)))
        except StoreError as exc:
            return self._fail(ApiError(503, type(exc).__name__, str(exc)))
        self.finish(dumps(body))

    def _fail(self, exc: ApiError) -> None:
        self.set_status(exc.status)
        self.finish(dumps({"error": exc.kind, "message": exc.message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (a crash, a 405) as JSON too."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else self._reason
        self.finish(dumps({"error": "Error" if status_code >= 500 else "BadRequest", "message": message}))

    def state(self):
        from .state import ViewerState

        return ViewerState(self.store_path)

    def int_argument(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get_argument(name, None)
        if text is None or text == "":
            return default
        try:
            value = int(text)
        except ValueError:
            raise ApiError(400, "BadArgument", f"{name}={text!r} is not a whole number") from None
        if not low <= value <= high:
            raise ApiError(400, "BadArgument", f"{name}={value} is out of range: {low} to {high}")
        return value


class NotFoundHandler(ApiHandler):
    def get(self, path: str | None = None) -> None:
        self._fail(ApiError(404, "NotFound", f"no such API path: {self.request.path} (see {API_PREFIX}/runs, "
                                             f"{API_PREFIX}/runs/ID, {API_PREFIX}/runs/ID/metrics, "
                                             f"{API_PREFIX}/queue, {API_PREFIX}/gpus)"))


# -- runs -------------------------------------------------------------------------------------
class RunsHandler(ApiHandler):
    async def get(self) -> None:
        try:
            limit = self.int_argument("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
            offset = self.int_argument("offset", 0, 0, 10**9)
        except ApiError as exc:
            return self._fail(exc)
        filters = {
            "experiments": self.get_arguments("experiment"), "statuses": self.get_arguments("status"),
            "tags": self.get_arguments("tag"), "text": self.get_argument("text", ""),
            "expression": self.get_argument("filter", ""),
        }
        keys = [key for part in self.get_arguments("metrics") for key in part.split(",") if key.strip()]

        def work():
            from notebook_exp.store import queries

            state = self.state()
            where = state.run_filter(**filters)
            frame = queries.runs_table(state._reader, where, layout=queries.API_LAYOUT, keys=keys or None)
            page = frame.iloc[offset:offset + limit]
            return {"total": len(frame), "offset": offset, "limit": limit,
                    "runs": [run_record(row) for row in page.to_dict("records")]}

        await self.answer(work)


class RunHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        def work():
            overview = self.state().run_overview(run_id)
            if overview is None:
                raise ApiError(404, "NotFound", f"no run {run_id!r} in {self.store_path.name}")
            run = {key: plain(value) for key, value in overview["run"].items()}
            return {"run": run, "events": records(overview["events"]), "metrics": records(overview["summary"])}

        await self.answer(work)


class MetricsHandler(ApiHandler):
    async def get(self, run_id: str) -> None:
        from notebook_exp.store.queries import X_KINDS

        key = self.get_argument("key", "")
        x = self.get_argument("x", "step")
        try:
            points = self.int_argument("points", DEFAULT_POINTS, 2, MAX_POINTS)
            if x not in X_KINDS:
                raise ApiError(400, "BadArgument", f"x={x!r}: use one of {', '.join(X_KINDS)}")
        except ApiError as exc:
            return self._fail(exc)

        def work():
            state = self.state()
            if state.run_overview(run_id) is None:
                raise ApiError(404, "NotFound", f"no run {run_id!r} in {self.store_path.name}")
            keys = state.metric_keys([run_id])
            if key not in keys:
                raise ApiError(400 if not key else 404, "BadArgument" if not key else "NotFound",
                               f"{'pass key=' if not key else f'run {run_id!r} logged no metric {key!r};'} "
                               f"its metrics: {', '.join(keys) or 'none'}")
            data = state.series([run_id], [key], x=x, width=max(1, points // 2))
            frame = data.points
            extent = (data.extents or {}).get((run_id, key))
            return {"run_id": run_id, "key": key, "x": x, "extent": list(extent) if extent else None,
                    "points": [[plain(a), plain(b)] for a, b in zip(frame["x"].tolist(), frame["value"].tolist(),
                                                                    strict=True)]}

        await self.answer(work)


# -- the machine's queue and GPUs ---------------------------------------------------------------
class QueueHandler(ApiHandler):
    async def get(self) -> None:
        def work():
            machine = machine_queue(self.store_path, gpus=False)
            return {"store": machine.store, "read_at": plain(machine.read_at),
                    "runs": [entry.to_dict() for entry in machine.runs]}

        await self.answer(work)


class GpusHandler(ApiHandler):
    async def get(self) -> None:
        def work():
            machine = machine_queue(self.store_path)
            return {"read_at": plain(machine.read_at), "gpus": [gpu.to_dict() for gpu in machine.gpus]}

        await self.answer(work)


def machine_queue(store_path: Path, gpus: bool = True):
    """The machine's queue and GPUs for this store (``scheduler.machine.queue``)."""
    from notebook_exp.config import get_settings
    from notebook_exp.scheduler.machine import queue

    return queue(get_settings().model_copy(update={"store": Path(store_path)}), gpus=gpus)


# -- values -------------------------------------------------------------------------------------
def credentials_match(auth: str, user: str, password: str) -> bool:
    """``user``/``password`` against the viewer's ``basic_auth``: a password, or a file
    holding a JSON password or ``{"user": "password"}`` (as Panel's login page reads it)."""
    info: Any = auth
    if os.path.isfile(auth):
        with open(auth, encoding="utf-8") as f:
            text = f.read()
        try:
            info = json.loads(text)
        except ValueError:
            info = text.strip()
    if isinstance(info, dict):
        expected = info.get(user)
        return isinstance(expected, str) and hmac.compare_digest(expected.encode(), password.encode())
    return isinstance(info, str) and hmac.compare_digest(info.encode(), password.encode())


def run_record(row: dict) -> dict:
    """A runs-table row as JSON: its columns, ``params`` (dotted names) and ``metrics``."""
    out: dict[str, Any] = {"params": {}, "metrics": {}}
    for column, value in row.items():
        for prefix, target in (("params.", out["params"]), ("metrics.", out["metrics"])):
            if column.startswith(prefix):
                if not _missing(value):
                    target[column[len(prefix):]] = plain(value)
                break
        else:
            out[column] = plain(value)
    return out


def records(frame) -> list[dict]:
    return [{k: plain(v) for k, v in row.items()} for row in frame.to_dict("records")] if frame is not None else []


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def plain(value: Any) -> Any:
    """``value`` as JSON-ready Python: timestamps ISO 8601 (UTC), numpy scalars and
    arrays numbers and lists, NaN and infinities None, dataclasses dicts."""
    import dataclasses

    import pandas as pd

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain(value.tolist())
    if hasattr(value, "item"):
        return plain(value.item())
    return str(value)


def dumps(body: Any) -> str:
    return json.dumps(body, allow_nan=False, separators=(",", ":"))
