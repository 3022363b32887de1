"""Sharing policies and the pure policy engine.

``load_policy(path)`` reads ``policies/`` (or one file, or ``$CTI_EXCHANGE_POLICIES``);
``evaluate(objects, policy, sender=..., recipient=...)`` returns one ``Decision``
per object; ``companions(...)`` gives the identities and marking definitions that
travel with the released objects; ``explain(...)`` traces one object.  The
marking tables (TLP 2.0 objects, TLP 1.0 -> 2.0, IEP 2.0) are in
``exchange.policy.markings``; the inbound rules a node applies to what a partner
sends are in ``exchange.policy.inbound``.

The engine, the marking tables and the inbound rules are pure: no I/O, no Flask,
no HTTP; they return new objects. Only ``model`` reads files (the policy YAML).
May import only the top-level leaves (``errors``, ``stix``, ``config``, ``_yaml``).
"""

from exchange.policy.engine import (
    REDACT,
    SHARE,
    WITHHOLD,
    Decision,
    Explanation,
    Judged,
    companions,
    evaluate,
    evaluate_many,
    explain,
)
from exchange.policy.model import Clause, Policy, current_policy, default_policy_dir, load_policy

__all__ = [
    "Clause",
    "Decision",
    "Explanation",
    "Judged",
    "Policy",
    "REDACT",
    "SHARE",
    "WITHHOLD",
    "companions",
    "current_policy",
    "default_policy_dir",
    "evaluate",
    "evaluate_many",
    "explain",
    "load_policy",
]
