"""Least-privilege ACLs of a federation on a secured cluster, made with kafka-python's admin client.

Who may do what (principal ``User:<certificate CN>``; nothing else is allowed, since the broker
runs ``StandardAuthorizer`` with ``allow.everyone.if.no.acl.found=false``):

==========================  ==============================================================
principal                   allowed
==========================  ==============================================================
``User:<node>`` (each)      WRITE ``edgeveil.updates``, ``.analytics``, ``.telemetry``,
                            ``.frames.anonymized``, ``.dlq`` (a model it rejects); READ
                            ``edgeveil.models`` and ``edgeveil.control`` with its own group
                            ``edgeveil-<node>-edge``
``User:aggregator``         READ ``edgeveil.updates`` with group ``<app id>``, and
                            ``.telemetry``, ``.dlq``, ``.control`` (its fleet page); WRITE
                            ``edgeveil.models`` and ``edgeveil.dlq``; READ/WRITE its changelog
                            topics (prefix ``<app id>-``)
``User:reader``             READ ``edgeveil.models``, ``.analytics``, ``.telemetry``, ``.dlq``,
                            ``.frames.anonymized``, ``.control`` (notebook, report, demo monitor;
                            no group)
``User:admin``              super user (``super.users``): the only one that creates or deletes
                            topics, changes ACLs and writes ``edgeveil.control``
                            (``edgeveil model promote|rollback``)
==========================  ==============================================================

Every allowed topic operation also gets DESCRIBE (metadata, offsets), which reveals a topic's
existence and partitions, nothing of its records. The topics, the aggregator's changelogs
included, are created here by the admin with their configs; the workers declare none
(``agents.app``: ``topic_allow_declare`` is off on a secured cluster).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from agents import federation
from agents.settings import Settings
from agents.topics import (
    ANALYTICS,
    CONTROL,
    DLQ,
    FEDERATION_TOPICS,
    FRAMES_ANONYMIZED,
    MODELS,
    TELEMETRY,
    UPDATES,
    TopicSpec,
    changelog_topics,
    ensure_topics,
)

log = logging.getLogger(__name__)

__all__ = ["AclRule", "apply_acls", "federation_acls", "list_acls", "remove_principal",
           "setup_federation"]

#: what an edge writes (the DLQ: a global model it could not verify)
EDGE_WRITES = (UPDATES, ANALYTICS, TELEMETRY, FRAMES_ANONYMIZED, DLQ)
READER_READS = (MODELS, ANALYTICS, TELEMETRY, DLQ, FRAMES_ANONYMIZED, CONTROL)
#: what an edge reads (global models; the staged-rollout commands that say which one to serve)
EDGE_READS = (MODELS, CONTROL)
#: what the aggregator reads besides the updates: its fleet page follows these (agents/fleet.py)
AGGREGATOR_FOLLOWS = (TELEMETRY, DLQ, CONTROL)


@dataclass(frozen=True, order=True)
class AclRule:
    """One ALLOW rule: ``principal`` may do ``operation`` on a resource (any host)."""

    principal: str  # "User:<id>"
    resource: str  # topic | group
    name: str
    operation: str  # READ | WRITE | DESCRIBE
    pattern: str = "LITERAL"  # LITERAL | PREFIXED


def _topic_rules(principal: str, specs: tuple[TopicSpec, ...], op: str) -> list[AclRule]:
    out = []
    for spec in specs:
        out += [AclRule(principal, "topic", spec.name, op),
                AclRule(principal, "topic", spec.name, "DESCRIBE")]
    return out


def _group_rules(principal: str, group: str) -> list[AclRule]:
    return [AclRule(principal, "group", group, "READ"),
            AclRule(principal, "group", group, "DESCRIBE")]


def node_rules(node: str) -> list[AclRule]:
    """What edge node ``node`` may do."""
    p = f"User:{node}"
    return (_topic_rules(p, EDGE_WRITES, "WRITE") + _topic_rules(p, EDGE_READS, "READ")
            + _group_rules(p, federation.edge_group(node)))


def federation_acls(nodes: list[str], *, aggregator_app_id: str) -> list[AclRule]:
    """Every rule of a federation of ``nodes`` whose aggregator runs as faust app
    ``aggregator_app_id`` (its consumer group and changelog prefix).

    Examples
    --------
    >>> rules = federation_acls(["n1"], aggregator_app_id="edgeveil-aggregator")
    >>> sorted({r.name for r in rules if r.principal == "User:n1" and r.operation == "WRITE"})
    ['edgeveil.analytics', 'edgeveil.dlq', 'edgeveil.frames.anonymized', 'edgeveil.telemetry', 'edgeveil.updates']
    >>> any(r.principal == "User:n1" and r.name == "edgeveil.updates" and r.operation == "READ"
    ...     for r in rules)
    False
    """
    agg = f"User:{federation.AGGREGATOR}"
    rules = (_topic_rules(agg, (UPDATES, *AGGREGATOR_FOLLOWS), "READ")
             + _topic_rules(agg, (MODELS, DLQ), "WRITE")
             + _group_rules(agg, aggregator_app_id))
    rules += [AclRule(agg, "topic", f"{aggregator_app_id}-", op, "PREFIXED")
              for op in ("READ", "WRITE", "DESCRIBE")]
    rules += _topic_rules(f"User:{federation.READER}", READER_READS, "READ")
    for node in nodes:
        rules += node_rules(node)
    return sorted(set(rules))


# --------------------------------------------------------------------------- kafka-python


def _admin(settings: Settings) -> Any:
    from kafka import KafkaAdminClient

    return KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                            client_id="edgeveil-acls", **settings.kafka_python_security())


def _to_acl(rule: AclRule) -> Any:
    from kafka.admin import (
        ACL,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourceType,
    )

    return ACL(principal=rule.principal, host="*", operation=ACLOperation[rule.operation],
               permission_type=ACLPermissionType.ALLOW,
               resource_pattern=ResourcePattern(ResourceType[rule.resource.upper()], rule.name,
                                                ACLResourcePatternType[rule.pattern]))


def _from_acl(acl: Any) -> AclRule:
    rp = acl.resource_pattern
    return AclRule(acl.principal, rp.resource_type.name.lower(), rp.resource_name,
                   acl.operation.name, rp.pattern_type.name)


def apply_acls(settings: Settings, rules: list[AclRule]) -> int:
    """Create ``rules`` (as the admin); returns how many were new. Idempotent."""
    have = set(list_acls(settings))
    new = [r for r in rules if r not in have]
    if not new:
        return 0
    admin = _admin(settings)
    try:
        result = admin.create_acls([_to_acl(r) for r in new])
    finally:
        admin.close()
    failed = result.get("failed", []) if isinstance(result, dict) else []
    if failed:
        raise RuntimeError(f"the broker refused {len(failed)} ACL(s): {failed[:3]}")
    _await(settings, lambda have: set(new) <= have, "the new ACLs to take effect")
    return len(new)


def _await(settings: Settings, done: Any, what: str, *, principal: str | None = None,
           timeout_s: float = 30.0) -> None:
    """Wait until the broker's ACLs satisfy ``done`` (ACL changes go through the controller's
    metadata log and reach the broker's authorizer a moment later)."""
    deadline = time.monotonic() + timeout_s
    while not done(set(list_acls(settings, principal))):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


def _any_acl_filter(principal: str | None) -> Any:
    """A filter matching every ACL (of ``principal`` only, when given)."""
    from kafka.admin import (
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePatternFilter,
        ResourceType,
    )

    return ACLFilter(principal=principal, host=None, operation=ACLOperation.ANY,
                     permission_type=ACLPermissionType.ANY,
                     resource_pattern=ResourcePatternFilter(ResourceType.ANY, None,
                                                            ACLResourcePatternType.ANY))


def list_acls(settings: Settings, principal: str | None = None) -> list[AclRule]:
    """Every ALLOW rule on the cluster (of ``principal`` only, when given)."""
    flt = _any_acl_filter(principal)
    admin = _admin(settings)
    try:
        acls, error = admin.describe_acls(flt)
    finally:
        admin.close()
    if error is not None and getattr(error, "errno", 0):
        raise RuntimeError(f"describing ACLs failed: {error}")
    return sorted(_from_acl(a) for a in acls)


def remove_principal(settings: Settings, principal: str) -> int:
    """Delete every ACL of ``principal``; returns how many were removed."""
    flt = _any_acl_filter(principal)
    admin = _admin(settings)
    try:
        results = admin.delete_acls([flt])
    finally:
        admin.close()
    removed = 0
    for _flt, matched, error in results:
        if error is not None and getattr(error, "errno", 0):
            raise RuntimeError(f"deleting the ACLs of {principal} failed: {error}")
        removed += len(matched)
    _await(settings, lambda have: not have, f"the ACLs of {principal} to go",
           principal=principal)
    return removed


def setup_federation(settings: Settings, nodes: list[str], *, aggregator_app_id: str,
                     ) -> dict[str, Any]:
    """As the admin: create every topic (the aggregator's changelogs included) and every ACL of
    the federation. Returns what was created."""
    specs = (*FEDERATION_TOPICS, *changelog_topics(aggregator_app_id))
    created = ensure_topics(settings, specs)
    rules = federation_acls(nodes, aggregator_app_id=aggregator_app_id)
    added = apply_acls(settings, rules)
    log.info("federation topics created: %s; %d of %d ACLs new", created, added, len(rules))
    return {"topics_created": created, "acls": len(rules), "acls_new": added}
