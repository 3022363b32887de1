"""The demo exchange: the scripted two-node run, its narrative, seed content helpers and
the node child processes it (and the tests) start.

May import every library layer; never ``exchange.cli`` (the CLI calls the demo).
"""
