"""Compliance: forget a customer in every store the product writes (``recsys forget``).

Modules: ``records`` (pure: which lines name a customer), ``database`` (PostgreSQL tables,
suppression, the audit), ``lake`` (training data runs), ``objects`` (delivered records, dead letters,
artifacts), ``report`` (what was found or done), ``forget`` (the order of the steps).
"""

from compliance.forget import Targets, forget
from compliance.report import OUT_OF_SCOPE, Change, ForgetReport, StoreResult

__all__ = ["OUT_OF_SCOPE", "Change", "ForgetReport", "StoreResult", "Targets", "forget"]
