"""The TAXII 2.1 node: Flask app factory on medallion's views, gunicorn worker, paging cursor,
accounts and login throttle, TLS and demo PKI, the medallion backend over the store, node operations.

May import: ``exchange.storage``, ``exchange.policy`` and the top-level leaves
(``errors``, ``stix``, ``config``). Never ``exchange.sharing``, ``exchange.cli`` or
``exchange.demo``: the background release is wired onto the app by
``exchange.sharing.background``.
"""
