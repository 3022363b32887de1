"""The sharing flow between partners: release under policy, the joint-attribution workflow,
the sync agent and its TAXII client (``taxii2client`` lives only here), the background
releaser of a serving node, and the report.

May import: ``exchange.node`` (node operations and the app factory), ``exchange.storage``,
``exchange.policy`` and the top-level leaves. Never the CLI or the demo.
"""
