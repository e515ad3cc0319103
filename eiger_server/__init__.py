"""eiger_server: drive a DECTRIS EIGER detector from spec through server_hdw."""

__version__ = "1.0.0"


def listen(address, timeout=None, **kwargs):
    """Iterate over the images eiger_server publishes (``--publish``); see
    eiger_server.observe.listen."""
    from eiger_server.observe.listen import listen as _listen
    return _listen(address, timeout, **kwargs)
