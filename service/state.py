"""What the routes use, built once in the app's lifespan: the pool, the stored answers, the model.

:class:`ModelSlot` holds the recommender. A server that starts before any model is loaded stays up
(``/readyz`` says why it is not ready, the stream path still answers) and opens the model as soon as
one is active; a loaded model is refreshed periodically so a new version is picked up without restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from core.errors import DatabaseUnavailable, ModelNotReady, RecsysError
from infra.logs import get_logger
from service.config import ServiceConfig
from service.metrics import set_model_version
from service.ports import AnswerLookup, ServingRecommender

__all__ = ["ModelSlot", "Services"]

log = get_logger(__name__)

Opener = Callable[[], Awaitable[ServingRecommender]]


class ModelSlot:
    """The current recommender, or the reason there is none."""

    def __init__(self, recommender: ServingRecommender | None = None, reason: str = "") -> None:
        self._recommender = recommender
        self.reason = reason or ("" if recommender else "no model is loaded yet")
        self._loaded = asyncio.Event()
        self._retired: set[str] = set()  # versions known not to be the current one (any more)
        if recommender is not None:
            self._loaded.set()
            set_model_version(recommender.model_version)

    @property
    def loaded(self) -> ServingRecommender | None:
        return self._recommender

    def get(self) -> ServingRecommender:
        """The recommender; raises ``ModelNotReady`` (503) when there is none."""
        if self._recommender is None:
            raise ModelNotReady(self.reason)
        return self._recommender

    def set(self, recommender: ServingRecommender) -> None:
        self._recommender = recommender
        self.reason = ""
        self._loaded.set()
        set_model_version(recommender.model_version)

    async def wait_loaded(self) -> ServingRecommender:
        """Returns once a recommender is loaded (callers bound it with a timeout)."""
        await self._loaded.wait()
        return self.get()

    async def refresh(self) -> bool:
        """Switch the recommender to a newer active version if there is one; True when it switched.

        Raises ``DatabaseUnavailable`` when the check cannot be made."""
        current = self._recommender
        if current is None:
            return False
        before = current.model_version
        switched = await current.refresh()
        if switched:
            self._retired.add(before)
            self._retired.discard(current.model_version)  # a rollback to it
            set_model_version(current.model_version)
            log.info("switched to model %s", current.model_version)
        return switched

    async def is_current(self, version: str) -> bool:
        """Whether ``version`` is the one the loaded recommender answers with, after switching to a
        newer active version when ``version`` is one this slot has not seen (a streamed answer of a
        version loaded after ours). False without a recommender. A version found not current is
        remembered, so stale answers cost no further check."""
        current = self._recommender
        if current is None:
            return False
        if current.model_version == version:
            return True
        if version in self._retired:
            return False
        await self.refresh()
        if current.model_version == version:
            return True
        self._retired.add(version)
        return False

    async def maintain(self, open_model: Opener, retry_s: float, refresh_s: float) -> None:
        """Open the model when there is none, refresh it when there is (runs until cancelled)."""
        while True:
            try:
                current = self._recommender
                if current is None:
                    self.set(await open_model())
                    log.info("model %s loaded", self.get().model_version)
                else:
                    await self.refresh()
            except ModelNotReady as exc:
                self.reason = str(exc) or "no active model version; run `recsys load-vectors`"
            except RecsysError as exc:  # the reason is shown to clients (/readyz, 503s): no internals
                if self._recommender is None:
                    self.reason = (
                        "cannot open the model: the database is not available"
                        if isinstance(exc, DatabaseUnavailable)
                        else "cannot open the model (the server log says why)"
                    )
                log.warning("model maintenance failed: %s", exc)
            except Exception:  # a supervising loop: keep serving, say why
                if self._recommender is None:
                    self.reason = "cannot open the model (the server log says why)"
                log.exception("model maintenance failed")
            await asyncio.sleep(retry_s if self._recommender is None else refresh_s)


@dataclass
class Services:
    config: ServiceConfig
    pool: asyncpg.Pool[Any]
    answers: AnswerLookup
    model: ModelSlot
