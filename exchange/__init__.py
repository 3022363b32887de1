"""cti-exchange: a US-ROK cyber threat information-sharing exchange.

Two TAXII 2.1 partner nodes (built on ``medallion``), STIX 2.1 content about
DPRK activity, machine-readable sharing policies traced to the US-ROK
frameworks, and a sync agent that pushes and pulls under those policies.
"""

from exchange.errors import ExchangeError

__version__ = "0.1.0"

__all__ = ["ExchangeError", "__version__"]
