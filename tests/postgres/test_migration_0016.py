"""Upgrading a 0015 schema to 0016: a webhook rejection's receipt written before kept its
codes only in its ``reason`` sentence; after the upgrade it carries them as structured
``problems`` and ``trace`` tells the same story as for a new one."""

from __future__ import annotations

import psycopg

from capirelay.ops.trace import story
from capirelay.outbox.postgres import PostgresOutbox
from capirelay.outbox.postgres.migrate import MIGRATIONS, migrate

T0 = 1_800_000_000.0
UP_TO_0015 = tuple(m for m in MIGRATIONS if m.version <= 15)
REASON = "rejected (event_too_old, missing_field): event_time is more than 7 days in the past; fix"

ROWS_0015 = """
INSERT INTO capirelay_receipts (pixel_id, event_name, event_id, outcome, source, recorded_at,
                                received_at, reason)
VALUES ('111', 'Purchase', 'old-rejected', 'dropped', 'webhook:shop', %(t)s, %(t)s, %(reason)s),
       ('111', 'Lead', 'old-bot', 'dropped', 'collect', %(t)s, %(t)s, 'bot'),
       -- not capirelay's grammar (upper case, a quote): left as it is, as SQLite's 0007 does
       ('111', 'Lead', 'odd-1', 'dropped', 'webhook:shop', %(t)s, %(t)s,
        'REJECTED (missing_field): x'),
       ('111', 'Lead', 'odd-2', 'dropped', 'webhook:shop', %(t)s, %(t)s, 'rejected (a"b): x')
"""


async def test_upgrade_from_0015_keeps_old_rejections_readable(postgres_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await migrate(conn, UP_TO_0015)
        await conn.execute(ROWS_0015, {"t": T0, "reason": REASON})
    box = PostgresOutbox(postgres_url, pool_size=2)
    await box.open()  # migrates to the latest version
    try:
        record = await box.trace("old-rejected")
        [bot] = (await box.trace("old-bot")).receipts
        odd = [(await box.trace(e)).receipts[0] for e in ("odd-1", "odd-2")]
    finally:
        await box.close()
    [rejected] = record.receipts
    assert rejected.reason == REASON  # the sentence stays as it was
    assert rejected.problem_codes == ("event_too_old", "missing_field")
    assert rejected.problems[0]["message"] == ("event_time is more than 7 days in the past; fix")
    assert rejected.rejected_at_ingest
    [step] = story(record)
    assert step.what == "rejected" and "(event_too_old, missing_field)" in step.detail
    assert (bot.problems, bot.rejected_at_ingest) == ([], False)
    assert [(r.problems, r.rejected_at_ingest) for r in odd] == [([], False)] * 2
