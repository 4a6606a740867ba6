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


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def get_store(ctx: Annotated[AppContext, Depends(get_context)]) -> Store:
    return ctx.store


def get_buckets(ctx: Annotated[AppContext, Depends(get_context)]) -> Buckets:
    return ctx.buckets


def get_settings(ctx: Annotated[AppContext, Depends(get_context)]) -> Settings:
    return ctx.settings


ContextDep = Annotated[AppContext, Depends(get_context)]
StoreDep = Annotated[Store, Depends(get_store)]
BucketsDep = Annotated[Buckets, Depends(get_buckets)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
