"""The server_hdw framing without sockets: bytes in, events out."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from eiger_server.wire.protocol import (TYPES, ClientConnection, Payload, Reply, Request,
                                   ServerConnection, array_reply, format_value, one_d_payload,
                                   payload_size, wire_type_for)


def feed_bytewise(conn: ServerConnection, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        events += conn.receive_data(data[i:i + 1])
    return events


# ------------------------------------------------------------------ requests

def test_request_split_byte_by_byte():
    conn = ServerConnection()
    events = feed_bytewise(conn, b"=: 7 get nimages\n=: 8 set nimages 10\n")
    assert events == [Request(7, "get", ["nimages"]), Request(8, "set", ["nimages", "10"])]


def test_several_requests_in_one_packet_and_a_partial_one():
    conn = ServerConnection()
    events = conn.receive_data(b"=: 1 hello spec\n=: 2 get_status\n=: 3 get sta")
    assert [e.cmdno for e in events] == [1, 2]
    assert events[0] == Request(1, "hello", ["spec"], None)
    assert conn.receive_data(b"te\n") == [Request(3, "get", ["state"])]


def test_crlf_and_extra_whitespace_are_accepted():
    conn = ServerConnection()
    events = conn.receive_data(b"=:  4\tget   count_time \r\n")
    assert events == [Request(4, "get", ["count_time"])]


def test_retransmission_is_dropped_but_a_new_number_is_not():
    conn = ServerConnection()
    events = conn.receive_data(b"=: 5 run 1 0\n=: 5 run 1 0\n=: 6 halt 0\n=: 5 get_status\n")
    assert [(e.cmdno, e.command) for e in events] == [(5, "run"), (6, "halt"), (5, "get_status")]
    assert conn.retransmissions == 1


def test_retransmission_split_across_reads():
    conn = ServerConnection()
    assert len(conn.receive_data(b"=: 9 arm\n")) == 1
    assert conn.receive_data(b"=: 9 ar") == []
    assert conn.receive_data(b"m\n") == []


@pytest.mark.parametrize("line", [
    b"get state\n",                 # no "=:"
    b"=: x get state\n",            # cmdno not an integer
    b"=: 1.5 get state\n",
    b"=: \xff\xfe get state\n",     # not UTF-8
    b"=: 12\n",                     # no command
    b"\n",                          # empty
    b"   \r\n",
])
def test_malformed_lines_give_no_event(line, caplog):
    conn = ServerConnection()
    with caplog.at_level(logging.DEBUG, logger="eiger_server.wire.protocol"):
        events = conn.receive_data(line + b"=: 2 get state\n")
    assert events == [Request(2, "get", ["state"])]
    assert conn.rejected == 1
    assert "malformed" in caplog.text


def test_malformed_line_does_not_count_as_previous_cmdno():
    conn = ServerConnection()
    events = conn.receive_data(b"=: 3 get a\n=: 3x get b\n=: 3 get c\n")
    assert events == [Request(3, "get", ["a"])]


def test_non_utf8_argument_is_rejected_without_crash():
    conn = ServerConnection()
    assert conn.receive_data(b"=: 1 set name_pattern caf\xe9\n") == []
    assert conn.rejected == 1
    assert conn.receive_data("=: 2 set name_pattern café\n".encode()) == [
        Request(2, "set", ["name_pattern", "café"])]


def test_address_argument_is_removed():
    conn = ServerConnection()
    (req,) = conn.receive_data(b"=: 1 config a=192.168.48.110\n")
    assert req.command == "config" and req.args == [] and req.address == "192.168.48.110"
    (req,) = conn.receive_data(b"=: 2 get roisum a=det 0 0 10 10\n")
    assert req.args == ["roisum", "0", "0", "10", "10"] and req.address == "det"


def test_long_line_is_discarded_without_buffering(caplog):
    conn = ServerConnection(max_line=1000)
    with caplog.at_level(logging.WARNING, logger="eiger_server.wire.protocol"):
        events = conn.receive_data(b"=: 1 set x " + b"y" * 5000)
        assert events == []
        assert conn.buffered <= 1000
        for _ in range(100):   # the line goes on and on
            assert conn.receive_data(b"z" * 5000) == []
            assert conn.buffered <= 1000
        events = conn.receive_data(b"zz\n=: 2 get state\n")
    assert events == [Request(2, "get", ["state"])]
    assert conn.rejected == 1
    assert caplog.text.count("longer than 1000") == 1


def test_long_complete_line_in_one_read_is_discarded():
    conn = ServerConnection(max_line=100)
    events = conn.receive_data(b"=: 1 set x " + b"y" * 500 + b"\n=: 2 get state\n")
    assert events == [Request(2, "get", ["state"])]
    assert conn.rejected == 1


def test_line_just_under_the_limit_is_accepted():
    conn = ServerConnection(max_line=100)
    line = b"=: 1 set x " + b"y" * (100 - 11)
    assert len(line) == 100
    assert conn.receive_data(line[:50]) == []
    assert conn.receive_data(line[50:] + b"\n")[0].args == ["x", "y" * 89]


# ------------------------------------------------------------------ write payload

def test_write_pauses_until_told_how_many_bytes_follow():
    conn = ServerConnection()
    raw = bytes(range(256)) * 4   # contains b"\n" and b"=:"-like bytes
    events = conn.receive_data(b"=: 1 write 256\n" + raw[:100])
    assert events == [Request(1, "write", ["256"])]
    assert conn.paused
    assert conn.receive_data(raw[100:300]) == []   # still paused: nothing parsed
    events = conn.expect_payload(1024)
    assert events == []
    assert conn.collecting
    events = conn.receive_data(raw[300:] + b"=: 2 xfer_done\n")
    assert events == [Payload(raw), Request(2, "xfer_done")]
    assert not conn.collecting and not conn.paused


def test_payload_byte_by_byte():
    conn = ServerConnection()
    conn.receive_data(b"=: 1 write 2 2\n")
    conn.expect_payload(16)
    data = np.arange(4, dtype="<u4").tobytes()
    events = feed_bytewise(conn, data + b"=: 2 xfer_done\n")
    assert events == [Payload(data), Request(2, "xfer_done")]


def test_refused_write_resumes_line_parsing():
    conn = ServerConnection()
    conn.receive_data(b"=: 1 write 4\n=: 2 get state\n")
    assert conn.paused
    assert conn.resume() == [Request(2, "get", ["state"])]


def test_zero_byte_payload():
    conn = ServerConnection()
    conn.receive_data(b"=: 1 write 0\n")
    assert conn.expect_payload(0) == [Payload(b"")]


# ------------------------------------------------------------------ replies

def test_reply_lines():
    assert ServerConnection.reply(12, Reply(True, "idle")) == b"@: 12 4#idle\n"
    assert ServerConnection.reply(13, Reply()) == b"@: 13 0#\n"
    assert ServerConnection.reply(14, Reply(False, "get. error: no such parameter")) == \
        b"!: 14 29#get. error: no such parameter\n"


def test_reply_length_counts_utf8_bytes():
    line = ServerConnection.reply(3, Reply(True, "µm ±2"))
    assert line == "@: 3 7#µm ±2\n".encode()


def test_reply_text_with_newline_keeps_its_length():
    line = ServerConnection.reply(3, Reply(True, "a\nb"))
    assert line == b"@: 3 3#a\nb\n"
    (resp,) = ClientConnection(3).receive_data(line)
    assert resp.text == "a\nb"


def test_value_formatting():
    assert format_value(True) == "1" and format_value(False) == "0"
    assert format_value(None) == ""
    assert format_value([1, 2.5, "x"]) == "1 2.5 x"
    assert format_value(10.0) == "10"
    assert format_value(np.uint32(7)) == "7" and format_value(np.bool_(True)) == "1"
    assert Reply.value(False).text == "0"


def test_array_reply_is_little_endian_row_after_row():
    img = np.array([[1, 2, 3], [256, 65535, 0]], dtype=">u2")
    reply = array_reply(img)
    assert reply.text == "6 ushort"
    assert bytes(reply.payload) == np.array([1, 2, 3, 256, 65535, 0], "<u2").tobytes()
    raw = ServerConnection.reply(5, reply)
    assert raw.startswith(b"@: 5 8#6 ushort\n")
    assert len(raw) == len(b"@: 5 8#6 ushort\n") + 12


def test_type_table():
    assert {n: (t.code, t.itemsize) for n, t in TYPES.items()} == {
        "ubyte": ("B", 1), "ushort": ("H", 2), "ulong": ("L", 4), "ulong64": ("Q", 8),
        "byte": ("b", 1), "short": ("h", 2), "long": ("l", 4), "long64": ("q", 8),
        "float": ("f", 4), "double": ("d", 8)}
    assert wire_type_for(np.uint32).name == "ulong"
    assert wire_type_for(np.float64).name == "double"
    with pytest.raises(ValueError):
        wire_type_for(np.complex64)
    assert payload_size("100 ulong") == 400
    assert payload_size("busy") is None


# ------------------------------------------------------------------ client side

def test_client_numbers_requests():
    c = ClientConnection()
    assert c.send("get", "state") == b"=: 1 get state\n"
    assert c.send("set", "count_time", 0.5) == b"=: 2 set count_time 0.5\n"
    assert c.last_cmdno == 2
    with pytest.raises(ValueError):
        c.send("set", "x\ny")


def test_client_parses_binary_read_reply_split_anywhere():
    img = (np.arange(12, dtype="<u4") * 1000003).reshape(3, 4)
    wire = (ServerConnection.reply(1, array_reply(img))
            + ServerConnection.reply(2, Reply(True, "idle")))
    for cut in range(len(wire) + 1):
        c = ClientConnection()
        c.send("read", 0, 2, 0, 3)
        c.send("get", "state")
        got = c.receive_data(wire[:cut]) + c.receive_data(wire[cut:])
        assert [r.cmdno for r in got] == [1, 2]
        assert got[0].text == "12 ulong"
        assert np.array_equal(np.frombuffer(got[0].payload, "<u4").reshape(3, 4), img)
        assert got[1].text == "idle" and got[1].payload == b""


def test_client_payload_bytes_that_look_like_replies():
    data = b"@: 9 4#idle\n" * 4    # 48 bytes of data that resemble a reply
    wire = b"@: 1 8#48 ubyte\n" + data + b"@: 2 1#1\n"
    c = ClientConnection()
    c.send("read", 0, 5, 0, 7)
    c.send("get_status")
    got = c.receive_data(wire)
    assert got[0].payload == data and got[1].text == "1"


def test_client_busy_or_error_reply_to_read_has_no_payload():
    c = ClientConnection()
    c.send("read", 0, 1, 0, 1)
    c.send("read", 0, 1, 0, 1)
    got = c.receive_data(b"@: 1 4#busy\n!: 2 9#not ready\n")
    assert [(r.ok, r.text, r.payload) for r in got] == [(True, "busy", b""),
                                                         (False, "not ready", b"")]


def test_client_one_d_read_with_explicit_payload_size():
    c = ClientConnection()
    c.send("read", 0, 4, expect_payload=one_d_payload(4))
    data = np.arange(5, dtype="<i4").tobytes()
    (resp,) = c.receive_data(b"@: 1 1#5\n" + data)
    assert resp.payload == data


def test_client_skips_garbage_between_replies():
    c = ClientConnection()
    c.send("get", "a")
    got = c.receive_data(b"junk\r\n@: 1 1#x\n")
    assert got[0].text == "x" and got[0].ok
    assert c.garbage == 6


def test_roundtrip_server_client():
    client, server = ClientConnection(100), ServerConnection()
    wire = client.send("get", "roisum", 0, 0, 10, 10) + client.send("hello", "spec")
    events = server.receive_data(wire)
    assert events == [Request(100, "get", ["roisum", "0", "0", "10", "10"]),
                      Request(101, "hello", ["spec"])]
    answers = b"".join(server.reply(e.cmdno, Reply(True, str(e.cmdno))) for e in events)
    assert [r.text for r in client.receive_data(answers)] == ["100", "101"]
