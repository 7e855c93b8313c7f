"""Shipped in-memory fakes of the seams in :mod:`appliance.protocols` (and the gateway's ports), for fast unit
tests. They are fakes, documented as such: every seam is also tested against its real implementation.
"""

from appliance.testing.fakes import FakeBackend, FakeKeyService, MemoryAuditLog, StaticCatalog

__all__ = ["FakeBackend", "FakeKeyService", "MemoryAuditLog", "StaticCatalog"]
