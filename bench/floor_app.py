"""The floor of the API benchmark: the least a FastAPI + uvicorn endpoint can do per request.

One indexed SELECT through an asyncpg pool and a JSON answer; no authentication, no checks, no
metrics. ``bench_api.py`` runs it (``uvicorn floor_app:app``) on the same database, machine and
load generator as fdpush, so fdpush's figures can be read as a share of it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from fastapi import FastAPI, Response

_SELECT = "SELECT channel_id, status FROM channel_states WHERE user_id = $1 AND pushkey = $2"
_pool: list[asyncpg.Pool] = []


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    _pool.append(await asyncpg.create_pool(os.environ["FLOOR_DATABASE_URL"], min_size=10))
    yield
    await _pool.pop().close()


app = FastAPI(lifespan=_lifespan)


@app.get("/channels/{pushkey:path}")
async def channels(pushkey: str, user: str) -> Response:
    rows = await _pool[0].fetch(_SELECT, user, pushkey)
    body = orjson.dumps({"channels": [{"id": r[0], "status": r[1]} for r in rows]})
    return Response(body, media_type="application/json")
