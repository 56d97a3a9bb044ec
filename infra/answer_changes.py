"""Which customers' stored answers changed: PostgreSQL's ``recsys_answers`` notifications.

``sql/0230_answer_notify.sql`` announces every statement that changes ``latest_recommendations``
(the changed customers' numbers) or ``customer_answers`` (``*``: every customer), delivered when
its transaction commits. :class:`AnswerChanges` listens on a connection of its own and hands each
notification to ``on_change`` (a set of customer numbers, or ``None`` for every customer).

``on_live(True)`` is called once ``LISTEN`` is in place and the database has the triggers (every
change committed from then on will be announced; a database without migration 0230 announces
nothing, so it is checked for every ``missing_s`` until it has them: ``recsys serve`` does not
migrate), ``on_live(False)`` as soon as the connection is lost or stops answering its
keep-alive (``SELECT 1`` every ``keepalive_s``, each within ``keepalive_s``): what was announced
meanwhile may be missed, so a user of it must stop trusting what it kept until it is live again. It
reconnects every ``retry_s`` until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from infra.logs import get_logger
from infra.pg import connect

__all__ = ["APPLICATION_NAME", "CHANNEL", "AnswerChanges", "parse_payload"]

log = get_logger(__name__)

CHANNEL = "recsys_answers"
APPLICATION_NAME = "recsys-answer-changes"  # the listener in pg_stat_activity
_TRIGGERS = (
    "latest_inserted",
    "latest_updated",
    "latest_deleted",
    "latest_truncated",
    "customer_answers_changed",
)
_HAS_TRIGGERS = """
SELECT count(DISTINCT tgname) FROM pg_trigger
WHERE NOT tgisinternal AND tgname = ANY($1::text[])
  AND tgrelid IN (to_regclass('latest_recommendations'), to_regclass('customer_answers'))
"""

OnChange = Callable[[frozenset[int] | None], None]
OnLive = Callable[[bool], None]
Connect = Callable[[str], Awaitable["asyncpg.Connection[Any]"]]


def parse_payload(payload: str) -> frozenset[int] | None:
    """The customers a notification names; ``None`` (every customer) for ``*`` and for anything
    that is not a comma-separated list of integers (never trust less than the signal says)."""
    if payload == "*":
        return None
    try:
        return frozenset(int(part) for part in payload.split(","))
    except ValueError:
        log.warning("unexpected %s payload %r: treated as every customer", CHANNEL, payload[:80])
        return None


class AnswerChanges:
    """Listens to ``recsys_answers`` (module docstring); :meth:`run` until cancelled."""

    def __init__(
        self,
        url: str,
        on_change: OnChange,
        on_live: OnLive,
        *,
        keepalive_s: float = 5.0,
        retry_s: float = 1.0,
        missing_s: float = 30.0,
        connect_to: Connect | None = None,
    ) -> None:
        self._url = url
        self._on_change = on_change
        self._on_live = on_live
        self._keepalive_s = keepalive_s
        self._retry_s = retry_s
        self._missing_s = missing_s
        self._said_missing = False
        self._connect = connect_to or (lambda url: connect(url, application_name=APPLICATION_NAME))
        self.connection: asyncpg.Connection[Any] | None = None  # the listening one, while live
        self.connects = 0  # how many times LISTEN was set up (for the logs and tests)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        self._on_change(parse_payload(str(payload)))

    async def run(self) -> None:
        while True:
            await self._listen_once()
            await asyncio.sleep(self._retry_s)

    async def _listen_once(self) -> None:
        conn: asyncpg.Connection[Any] | None = None
        try:
            conn = await self._connect(self._url)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c: lost.set())
            await conn.add_listener(CHANNEL, self._notified)
            while await conn.fetchval(_HAS_TRIGGERS, list(_TRIGGERS)) < len(_TRIGGERS):
                if not self._said_missing:
                    log.warning(
                        "the database does not announce answer changes yet (run `recsys migrate`: "
                        "migration 0230): answers are read from the database until it does"
                    )
                    self._said_missing = True
                await asyncio.sleep(self._missing_s)
            self.connection = conn
            self.connects += 1
            self._on_live(True)
            if self.connects > 1:
                log.info("listening to %s again: stored answers are kept in memory again", CHANNEL)
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), self._keepalive_s)
                    break
                await asyncio.wait_for(conn.execute("SELECT 1"), self._keepalive_s)
            log.warning("the %s listener's connection was lost: answers are read from the database", CHANNEL)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  connection refused, keep-alive timed out, ...: retried
            log.warning("cannot listen to %s (%s): answers are read from the database", CHANNEL, exc)
        finally:
            self.connection = None
            self._on_live(False)
            if conn is not None:
                conn.terminate()
