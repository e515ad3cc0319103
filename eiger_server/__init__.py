"""eiger_server: drive a DECTRIS EIGER detector from spec through server_hdw."""

__version__ = "1.0.0"

# A receiver for the server's --publish socket: ``for item in listen(address): ...``
from eiger_server.observe.listen import Item, listen  # noqa: E402

__all__ = ["__version__", "listen", "Item"]
