"""A simulated EIGER DCU (SIMPLON REST API, streams, file writer, monitor) for tests.

Device logic (:class:`FakeDCU`) is kept apart from its adapters; use
:class:`FakeDCUApp` for a complete fake detector on local ports, or
``python -m eiger_server.fakedcu`` from the command line.
"""
from eiger_server.fakedcu.app import FakeDCUApp
from eiger_server.fakedcu.device.model import FakeDCU, FakeDCUError

__all__ = ["FakeDCU", "FakeDCUApp", "FakeDCUError"]
