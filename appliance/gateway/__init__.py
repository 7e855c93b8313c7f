"""The gateway: the Litestar front door (auth, access policy, rate limits, audit-before-answer, web pages).

See README.md beside this file for the design notes.
"""

from appliance.gateway.app import create_app
from appliance.gateway.auth.principal import Principal
from appliance.gateway.policy import AccessPolicy, PolicyStore, parse_policy
from appliance.gateway.ports import AdapterCatalog, AdapterRef, AuditReader

__all__ = [
    "AccessPolicy",
    "AdapterCatalog",
    "AdapterRef",
    "AuditReader",
    "PolicyStore",
    "Principal",
    "create_app",
    "parse_policy",
]
