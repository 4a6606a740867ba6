"""A real S3-compatible server (moto) on 127.0.0.1 for the tests that need one."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from personatag.config import Settings

S3_BUCKET = "personatag-test"
S3_KEY = "test-access-key"
S3_SECRET = "test-secret-key"  # noqa: S105 - a throwaway credential for the local test server
S3_REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
        region_name=S3_REGION,
    )


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto server on a free loopback port, with the test bucket created."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        s3_client(endpoint).create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        server.stop()


def s3_settings(endpoint: str, data_dir: Path) -> Settings:
    """Settings for a fresh, unique prefix in the test bucket."""
    return Settings(
        data_dir=data_dir,
        bucket_url=f"s3://{S3_BUCKET}/run-{uuid.uuid4().hex[:12]}",
        s3_endpoint_url=endpoint,
        s3_access_key=S3_KEY,  # type: ignore[arg-type]
        s3_secret_key=S3_SECRET,  # type: ignore[arg-type]
        s3_region=S3_REGION,
    )
