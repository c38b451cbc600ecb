"""A connection removed while its mailboxes still have rounds queued: the rounds end quietly.

(A module of its own: it removes the module's Contoso connection, which other sync tests share.)
"""

from __future__ import annotations

from calbroker.domain.connections import Connection
from calbroker.domain.sync import SyncState
from calbroker.services.sync import request_round
from tests.fixtures.sync import SyncWorld
from tests.workers.conftest import ADELE, ALEX


async def test_rounds_queued_for_a_removed_connection_end_without_failing(
    world: SyncWorld, contoso: Connection
) -> None:
    rows = await world.rows(contoso.id)
    response = await world.http.delete(f"/v1/connections/{contoso.id}")
    assert response.status_code == 204, response.text
    async with world.services.pool.acquire() as conn, conn.transaction():
        for mailbox in (ADELE, ALEX):
            await request_round(conn, rows[mailbox].id, full=True)
    summary = await world.drain()
    assert summary.round_failures == 0, summary
    after = await world.rows(contoso.id)
    for mailbox in (ADELE, ALEX):
        assert after[mailbox].state is not SyncState.FAILED, after[mailbox]
        assert after[mailbox].last_error is None, after[mailbox]
