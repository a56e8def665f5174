"""BackupTargets: from the custom resource and its Secrets to what the backup engine needs.

``resolve_target`` does the reads; everything it can find wrong is a :class:`Problem` with a
reason a user can act on (TargetNotFound, SecretNotFound, SecretKeyMissing). The node
plugin may get a target's Secrets only once the operator has granted them by name
(:mod:`statehold.controller.node_grants`): until then it is refused, and that is
``SecretNotGranted``, retried soon, never a failure.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from statehold.controller.problems import Problem
from statehold.errors import NotFound, PermissionDenied
from statehold.kube.facade import Kube
from statehold.kube.kinds import BACKUP_TARGET, SECRET


@dataclass(frozen=True, slots=True)
class TargetConfig:
    name: str
    namespace: str
    kind: str                      # "s3" | "path"
    password: str = field(repr=False)
    path: str = ""
    endpoint: str = ""
    bucket: str = ""
    prefix: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)

    def describe(self) -> str:
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}".rstrip("/") + f" at {self.endpoint}"
        return self.path


def secret_value(secret: dict[str, Any], key: str) -> str:
    """One key of a Secret (``data`` is base64; ``stringData`` when not yet converted)."""
    name = secret["metadata"]["name"]
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        raise Problem("SecretKeyMissing", f"Secret {name} has no key {key!r}")
    try:
        return base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise Problem("SecretKeyInvalid", f"Secret {name} key {key!r} is not valid base64 "
                      "UTF-8 text") from exc


GRANT_RETRY = 10.0
"""Seconds before a read the operator had not granted yet is tried again."""


def _secret(kube: Kube, namespace: str, name: str, purpose: str) -> dict[str, Any]:
    try:
        return kube.get(SECRET, name, namespace)
    except NotFound:
        raise Problem("SecretNotFound", f"Secret {namespace}/{name} ({purpose}) does not "
                      "exist") from None
    except PermissionDenied:
        raise Problem("SecretNotGranted", f"Secret {namespace}/{name} ({purpose}) is not "
                      "readable here yet: the operator grants the node plugin each Secret a "
                      f"BackupTarget names (Role statehold-node-secrets in {namespace}); "
                      "waiting for it (never the agents' CA or certificate Secrets, nor a "
                      "service-account token)", retry_after=GRANT_RETRY) from None


def target_from(kube: Kube, target: dict[str, Any]) -> TargetConfig:
    """Resolve a BackupTarget object's Secrets into a TargetConfig."""
    meta, spec = target["metadata"], target.get("spec") or {}
    ns = meta["namespace"]
    pref = spec["passwordSecretRef"]
    password = secret_value(_secret(kube, ns, pref["name"], "repository password"),
                            pref.get("key", "password"))
    if not password:
        raise Problem("SecretKeyInvalid", f"Secret {pref['name']}: the repository password is empty")
    if "s3" in spec:
        s3 = spec["s3"]
        cref = s3["credentialsSecretRef"]
        creds = _secret(kube, ns, cref["name"], "S3 credentials")
        return TargetConfig(
            name=meta["name"], namespace=ns, kind="s3", password=password,
            endpoint=s3["endpoint"], bucket=s3["bucket"], prefix=s3.get("prefix", ""),
            region=s3.get("region", "us-east-1"),
            access_key=secret_value(creds, cref.get("accessKeyIdKey", "accessKeyId")),
            secret_key=secret_value(creds, cref.get("secretAccessKeyKey", "secretAccessKey")))
    if "path" in spec:
        return TargetConfig(name=meta["name"], namespace=ns, kind="path", password=password,
                            path=spec["path"]["path"])
    # the schema makes this unreachable on a real API server; kept for objects from elsewhere
    raise Problem("UnknownTargetType", f"BackupTarget {meta['name']} sets neither s3 nor path",
                  permanent=True)


def resolve_target(kube: Kube, namespace: str, name: str) -> TargetConfig:
    try:
        target = kube.get(BACKUP_TARGET, name, namespace)
    except NotFound:
        raise Problem("TargetNotFound", f"BackupTarget {namespace}/{name} does not exist") from None
    return target_from(kube, target)
