"""How to reach object storage: endpoint, region, plain HTTP and anonymous access.

The `storage` config section wins over the standard AWS environment variables
(`AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`); credentials come only from the environment (or the
instance's role), read by each library's own AWS credential chain, so no secret is ever written
into a config, a plan or a marker. Settings are a small frozen value that travels with every
task to the actors, which read and write the same stores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

# Attempts per request before an object-store error is the user's to see.
RETRIES = 10


@dataclass(frozen=True)
class StorageSettings:
    endpoint_url: str | None = None  # e.g. http://127.0.0.1:9000 for MinIO or moto
    region: str | None = None
    allow_http: bool = False
    anonymous: bool = False  # public buckets: requests go unsigned
    attempts: int = RETRIES  # per request, throttling and dropped connections included
    lock_lease_s: float = 60.0  # an object-store output's lock expires this long after a kill

    @classmethod
    def resolve(
        cls,
        endpoint_url: str | None = None,
        region: str | None = None,
        allow_http: bool | None = None,
        anonymous: bool = False,
        lock_lease_s: float = 60.0,
    ) -> StorageSettings:
        """The config's values, else the environment's."""
        env = os.environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        http = (
            allow_http
            if allow_http is not None
            else bool(endpoint and endpoint.startswith("http:"))
        )
        return cls(
            endpoint_url=endpoint or None,
            region=region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            allow_http=http,
            anonymous=anonymous,
            lock_lease_s=lock_lease_s,
        )

    def polars(self) -> dict[str, str]:
        """storage_options for polars' object-store readers (s3://)."""
        found = {}
        if self.endpoint_url:
            found["aws_endpoint_url"] = self.endpoint_url
        if self.region:
            found["aws_region"] = self.region
        if self.allow_http:
            found["aws_allow_http"] = "true"
        if self.anonymous:
            found["aws_skip_signature"] = "true"
        return found

    def boto3(self) -> dict[str, Any]:
        """Arguments for boto3.client("s3", ...): throttling (503 SlowDown) and dropped
        connections are retried with backoff, as S3's own guidance asks."""
        from botocore import UNSIGNED
        from botocore.config import Config

        found: dict[str, Any] = {}
        if self.endpoint_url:
            found["endpoint_url"] = self.endpoint_url
        if self.region:
            found["region_name"] = self.region
        signing = {"signature_version": UNSIGNED} if self.anonymous else {}
        retries = {"max_attempts": self.attempts, "mode": "adaptive"}
        found["config"] = Config(retries=retries, **signing)
        return found
