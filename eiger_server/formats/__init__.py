"""Wire and file formats, each in one home, used by the server and the fake DCU alike.

* :mod:`.cbor` — CBOR tags of stream V2 and the RFC 8746 typed-array table;
* :mod:`.compression` — bitshuffle/LZ4 and LZ4 in the HDF5 filter framing,
  compress and decompress, the V1 encoding names, the HDF5 filter ids;
* :mod:`.decode` — encoded image channels (:class:`~.decode.Encoded`) -> arrays;
* :mod:`.stream_v1`, :mod:`.stream_v2` — parse and encode the stream messages
  (events in :mod:`.stream_events`);
* :mod:`.nxmx` — the EIGER/NXmx master and data file layout;
* :mod:`.darray` — SIMPLON darray JSON <-> arrays.
"""
