"""How a secured broker authenticates and authorizes: mutual TLS, SCRAM, ACLs."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.identity import TlsIdentity

#: the authorizer of KRaft clusters (ACLs live in the metadata log)
AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
#: certificate subject ``CN=<id>`` (alone or first) -> principal ``User:<id>``
PRINCIPAL_MAPPING_RULES = "RULE:^CN=([^,]+)(,.*)?$/$1/,DEFAULT"


@dataclass(frozen=True)
class BrokerSecurity:
    """How a secured broker authenticates and authorizes (see docs/security.md).

    The client listener is ``SSL`` and requires a client certificate signed by ``broker.ca``
    (mutual TLS); the certificate's CN is the principal. Brokers and controllers talk to each
    other over TLS with the same requirement, presenting ``broker`` (whose CN is the admin
    principal: the only super user). ``StandardAuthorizer`` is on and
    ``allow.everyone.if.no.acl.found`` is false, so a principal without an ACL can do nothing.

    Parameters
    ----------
    broker
        The brokers' certificate (CN = ``admin``, with ``127.0.0.1``/``localhost`` as names),
        its key and the CA every party must be signed by.
    admin
        The operator's client identity (CN = ``admin``): what the harness probes with and what
        creates topics and ACLs.
    key_password
        Passphrase of the broker's key file when it is encrypted (``ssl.key.password``).
    scram_users
        With these, a second listener ``SASL_SSL`` accepts SCRAM-SHA-512 logins (name ->
        password, created when the storage is formatted) over TLS without a client certificate.
    """

    broker: TlsIdentity
    admin: TlsIdentity
    key_password: str | None = field(default=None, repr=False)
    scram_users: dict[str, str] = field(default_factory=dict, repr=False)
    admin_principal: str = "admin"

    @property
    def sasl(self) -> bool:
        return bool(self.scram_users)
