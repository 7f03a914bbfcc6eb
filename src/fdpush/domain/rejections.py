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

from fdpush.domain.gateway_url import gateway_base_url
from fdpush.domain.keys import KeyVault
from fdpush.domain.pushers import device_lock, user_lock
from fdpush.logs import pushkey_ref, user_ref
from fdpush.storage import outbox, queries
from fdpush.storage.database import Database

__all__ = ["forget_rejected_pushkey"]

log = logging.getLogger(__name__)


def _at_gateway(found: list[queries.PusherRef], gateway: str) -> list[queries.PusherRef]:
    """Only the pushers whose ``data.url`` points at the reporting gateway."""
    return [
        p for p in found if gateway_base_url(str(orjson.loads(p.data).get("url", ""))) == gateway
    ]


async def forget_rejected_pushkey(
    db: Database, vault: KeyVault, gateway: str, pushkey: str
) -> list[str]:
    """Delete the pushers of ``pushkey`` at ``gateway``; return the device's pending ids there."""
    index = vault.pushkey_index(pushkey)  # what is stored of it
    async with db.read() as conn:
        found = _at_gateway(await queries.pushers_with_pushkey(conn, index), gateway)
    users = sorted({p.user_id for p in found})
    async with db.write(*(user_lock(u) for u in users), device_lock(index)) as conn:
        doomed = _at_gateway(await queries.pushers_with_pushkey(conn, index), gateway)
        # Asked before the pushers go: deleting them unlinks their notifications.
        pending = await outbox.pending_for_pushers(conn, [p.id for p in doomed])
        for p in doomed:
            await queries.delete_pusher(conn, p.user_id, p.app_id, index)
            await queries.record_audit(
                conn,
                action="pusher.rejected",
                actor="gateway",
                user_id=p.user_id,
                app_id=p.app_id,
                pushkey=index,
                detail={"gateway": gateway.split("://", 1)[-1].split("/", 1)[0]},
            )
            if not await queries.device_exists(conn, p.user_id, index):
                await queries.delete_device_states(conn, p.user_id, index)
            log.warning(
                "gateway rejected a pushkey; pusher deleted",
                extra={"user": user_ref(p.user_id), "pushkey": pushkey_ref(pushkey)},
            )
    return pending
