"""``eiger_server.listen(address)``: a receiver for ``--publish`` in a few lines.

    import eiger_server
    for item in eiger_server.listen("tcp://beamline-pc:9100", timeout=10):
        print(item.meta["series"], item.meta["frame"], item.image.sum())

Each item has ``.image`` (the first channel, a numpy array, decoded),
``.channels`` (every channel by name) and ``.meta`` (``series``, ``frame``,
the series' header values, ``seq``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

import numpy as np
import zmq

from eiger_server.formats import stream_v1, stream_v2
from eiger_server.formats.stream_events import ImageMessage
from eiger_server.observe.publish import TOPIC_DECODED, TOPIC_IMAGE


@dataclass(frozen=True)
class Item:
    """One image from the PUB socket."""

    image: np.ndarray
    meta: Dict[str, Any]
    channels: Dict[str, np.ndarray] = field(default_factory=dict)


def listen(address: str, timeout: Optional[float] = None, *, decoded: bool = False,
           context: Optional[zmq.Context] = None) -> Iterator[Item]:
    """Yield the images eiger_server publishes on ``address`` (``--publish``).

    ``timeout``: seconds to wait for the next image before the iteration
    ends (None: wait for ever). ``decoded=True`` takes the throttled decoded
    images (``--publish-decoded``) instead of every image as received.
    Images the server dropped for a slow listener show as gaps in ``meta['seq']``.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC_DECODED if decoded else TOPIC_IMAGE)
    sock.connect(address)
    wait_ms = None if timeout is None else max(0, int(timeout * 1000))
    try:
        while True:
            if not sock.poll(wait_ms, zmq.POLLIN):
                return
            parts = sock.recv_multipart()
            item = _item(parts)
            if item is not None:
                yield item
    finally:
        sock.close(0)


def _item(parts: list) -> Optional[Item]:
    topic = parts[0]
    envelope = json.loads(parts[1])
    meta = json.loads(parts[2]) if len(parts) > 2 else {}
    meta.update(envelope)
    if topic == TOPIC_DECODED:
        image = np.frombuffer(parts[3], dtype=np.dtype(envelope["dtype"])).reshape(
            envelope["shape"])
        return Item(image, meta, {"image": image})
    if topic != TOPIC_IMAGE:
        return None
    parse = stream_v2.parse if envelope.get("version") == "V2" else stream_v1.parse
    event = parse(parts[3:])
    if not isinstance(event, ImageMessage):
        raise ValueError(f"published image {envelope} could not be parsed: "
                         f"{getattr(event, 'message', event)}")
    what = f"frame {event.frame} of series {event.series}"
    channels = {name: enc.decode(f"{what}, channel {name}")
                for name, enc in event.channels.items()}
    meta.setdefault("channels", list(channels))
    return Item(next(iter(channels.values())), meta, channels)
