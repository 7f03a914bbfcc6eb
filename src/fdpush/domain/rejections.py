"""A gateway rejected a pushkey: stop sending to it and delete its pushers at the first report.

Concept: "The gateway answers with ... `rejected` pushkeys: the FD must stop sending to those
and delete their pushers." Gateways report a rejected pushkey once and then forget it, so this
must succeed the first time. Only pushers whose ``data.url`` points at the reporting gateway are
deleted: another gateway's word about a pushkey counts for nothing. The device's channel
choices go with its last pusher, every deletion is audited, and the device's other pending
notifications at that gateway end as rejected too.
"""

from __future__ import annotations

import logging

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush.domain.gateway_url import gateway_base_url
from fdpush.domain.pushers import device_lock, user_lock
from fdpush.logs import pushkey_ref, user_ref
from fdpush.storage import outbox, queries
from fdpush.storage.database import Database
from fdpush.storage.schema import pushers

__all__ = ["forget_rejected_pushkey"]

log = logging.getLogger(__name__)


async def _pushers_at(conn: AsyncConnection, gateway: str, pushkey: str) -> list[tuple[str, str]]:
    rows = await conn.execute(
        select(pushers.c.user_id, pushers.c.app_id, pushers.c.data).where(
            pushers.c.pushkey == pushkey
        )
    )
    return [
        (r.user_id, r.app_id)
        for r in rows
        if gateway_base_url(str(orjson.loads(r.data).get("url", ""))) == gateway
    ]


async def forget_rejected_pushkey(db: Database, gateway: str, pushkey: str) -> list[str]:
    """Delete the pushers of ``pushkey`` at ``gateway``; return the device's pending ids there."""
    async with db.read() as conn:
        users = sorted({user for user, _ in await _pushers_at(conn, gateway, pushkey)})
    pending: list[str] = []
    async with db.write(*(user_lock(u) for u in users), device_lock(pushkey)) as conn:
        for user_id, app_id in await _pushers_at(conn, gateway, pushkey):
            await queries.delete_pusher(conn, user_id, app_id, pushkey)
            await queries.record_audit(
                conn,
                action="pusher.rejected",
                actor="gateway",
                user_id=user_id,
                app_id=app_id,
                pushkey=pushkey,
                detail={"gateway": gateway.split("://", 1)[-1].split("/", 1)[0]},
            )
            if not await queries.device_exists(conn, user_id, pushkey):
                await queries.delete_device_states(conn, user_id, pushkey)
            log.warning(
                "gateway rejected a pushkey; pusher deleted",
                extra={"user": user_ref(user_id), "pushkey": pushkey_ref(pushkey)},
            )
        for user_id in users:
            pending += await outbox.pending_for_device(conn, user_id, pushkey, gateway)
    return pending
