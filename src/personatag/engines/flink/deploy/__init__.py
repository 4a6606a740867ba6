"""Job bundles and the deploy flow: build, validate, activate, roll back, list.

``deploy`` builds a bundle of this personatag into the artifacts bucket and
hands it to the deploy handler, which validates it and records the active
version in the job-properties bucket. See docs/deploy.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from personatag.buckets import Buckets
from personatag.engines.flink.deploy.bundle import BundleInfo, build_bundle
from personatag.engines.flink.deploy.handler import (
    ScanResult,
    handle_artifact,
    rollback,
    scan_artifacts,
)
from personatag.engines.flink.deploy.layout import BundleError, JobProperties, parse_properties
from personatag.engines.flink.deploy.state import Deployment
from personatag.engines.flink.deploy.status import (
    BundleStatus,
    active_bundle,
    fetch_active,
    list_bundles,
)
from personatag.engines.flink.deploy.validate import inspect_bundle

__all__ = [
    "BundleError",
    "BundleInfo",
    "BundleStatus",
    "Deployment",
    "JobProperties",
    "ScanResult",
    "active_bundle",
    "build_bundle",
    "deploy",
    "fetch_active",
    "handle_artifact",
    "inspect_bundle",
    "list_bundles",
    "parse_properties",
    "rollback",
    "scan_artifacts",
]


def deploy(
    buckets: Buckets,
    *,
    properties: Mapping[str, Any],
    actor: str,
    now: datetime | None = None,
    package_dir: Path | None = None,
) -> Deployment:
    """Build a bundle of this personatag and activate it (``personatag deploy``)."""
    info = build_bundle(
        buckets, properties=properties, actor=actor, now=now, package_dir=package_dir
    )
    return handle_artifact(buckets, info.key, actor=actor, now=now)
