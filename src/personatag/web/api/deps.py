"""What routes get injected: the app's store, buckets and settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from personatag.buckets import Buckets
from personatag.config import Settings
from personatag.store import Store


@dataclass
class AppContext:
    """The runtimes one app serves with (passed in, so tests use real small ones)."""

    settings: Settings
    store: Store
    buckets: Buckets


# Dependencies that only pick objects off the app are async: a sync one costs
# a hop to the thread pool per request (measured: ~1 ms each under load).
async def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def get_store(ctx: Annotated[AppContext, Depends(get_context)]) -> Store:
    return ctx.store


async def get_buckets(ctx: Annotated[AppContext, Depends(get_context)]) -> Buckets:
    return ctx.buckets


async def get_settings(ctx: Annotated[AppContext, Depends(get_context)]) -> Settings:
    return ctx.settings


ContextDep = Annotated[AppContext, Depends(get_context)]
StoreDep = Annotated[Store, Depends(get_store)]
BucketsDep = Annotated[Buckets, Depends(get_buckets)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
