"""Watching the stream from outside spec: live page, metrics, PUB socket, rates.

* :mod:`hooks`   the one interface the stream path calls (``StreamObserver``)
* :mod:`observer` counts, keeps a reference to the latest image, logs rates
  and a summary of every series
* :mod:`publish` the ZeroMQ PUB socket (``--publish``)
* :mod:`metrics` Prometheus text (``/metrics``)
* :mod:`png`     the live view's image (log scale, colour map, downscaled)
* :mod:`http`    the read-only HTTP server (``--http-port``)
* :mod:`listen`  ``eiger_server.listen(address)``: a receiver for the PUB socket
* :mod:`service` all of it put together for one server (``Observation``)
"""
