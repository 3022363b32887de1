"""The node's web page: ``/ui/`` for analysts, served by the node's own ``serve`` process and port.

``register_ui(app, opened, ...)`` mounts the Flask blueprint of ``views`` on the
node's app (``exchange.sharing.background`` wires it). Jinja templates ship as
package data (``templates/``), charts are SVG drawn on the server (``charts``),
no JavaScript, nothing fetched from the internet. The static ``report --html``
renders the same templates (``render``).
"""

from exchange.sharing.ui.views import register_ui

__all__ = ["register_ui"]
