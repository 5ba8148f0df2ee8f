"""What every store module does around a Redis call: errors become StoreError, replies text."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import TypeVar

from redis.exceptions import RedisError

from bot.errors import StoreError

T = TypeVar("T")


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Redis errors inside become a StoreError saying ``what`` was being done."""
    try:
        yield
    except RedisError as exc:
        raise StoreError(
            f"Redis is unavailable ({what}): {exc}. Nothing was changed; "
            "try again when Redis is back."
        ) from exc


async def run(what: str, call: Awaitable[T]) -> T:
    """``await call`` under ``translated(what)``."""
    async with translated(what):
        return await call


def as_text(value: object) -> str:
    """The client decodes responses; this narrows its bytes|str types for the checker."""
    return value.decode() if isinstance(value, bytes) else str(value)
