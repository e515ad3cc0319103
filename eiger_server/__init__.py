"""eiger_server: drive a DECTRIS EIGER detector from spec through server_hdw."""

__version__ = "1.0.0"
