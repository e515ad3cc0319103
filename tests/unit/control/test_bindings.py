"""Every image_par row names what serves it; a wrong binding fails at import.

Also: the options are one typed object whose defaults the parser shares.
"""
from __future__ import annotations

import dataclasses
import importlib
import sys
import textwrap

import pytest

from eiger_server.options import ServerOptions, build_parser, parse_args
from eiger_server.control import table
from eiger_server.control.acquisition import Acquisition
from eiger_server.components.binding import (ROLE_ARGS, BindingError, Local, component,
                                           registered_components)
from eiger_server.control.table import Param
from eiger_server.errors import ParameterError
from eiger_server.simplon.rest import SimplonClient
from eiger_server.stream.handler import StreamHandler
from helpers import free_port

LOCAL_ROWS = [row for row in table.TABLE if row.local is not None]


# -- a wrong binding fails at declaration ---------------------------------------------------
def test_a_module_declaring_a_wrong_binding_fails_at_import(tmp_path, monkeypatch):
    """A table module binding a read-write row to a getter only does not import."""
    (tmp_path / "wrong_table.py").write_text(textwrap.dedent("""
        from eiger_server.control.acquisition import Acquisition
        from eiger_server.components.binding import Local
        from eiger_server.control.table import Param

        ROWS = [Param("acq_mode", "DATA", "RW", "ALL", "mode",
                      local=Local(read=Acquisition.get_acq_mode))]
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BindingError, match="'acq_mode' \\(RW\\) needs read, write="):
        importlib.import_module("wrong_table")
    assert "wrong_table" not in sys.modules


def test_a_misspelt_method_fails_at_import(tmp_path, monkeypatch):
    (tmp_path / "typo_table.py").write_text(textwrap.dedent("""
        from eiger_server.components.binding import Local
        from eiger_server.stream.handler import StreamHandler

        BINDING = Local(read=StreamHandler.get_autosav)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AttributeError, match="get_autosav"):
        importlib.import_module("typo_table")


def test_a_getter_used_as_a_setter_is_refused():
    # get_seqid takes no value: it cannot serve image_par(unit, "seqid", value).
    with pytest.raises(BindingError, match="Acquisition.get_seqid cannot write with 1"):
        Local(read=Acquisition.get_seqid, write=Acquisition.get_seqid)


def test_a_command_needing_an_argument_is_refused():
    @component
    class Needy:
        def do_move(self, where: str) -> str:
            return where

    with pytest.raises(BindingError, match="cannot run with 0 argument"):
        Local(run=Needy.do_move)


def test_methods_of_two_components_cannot_serve_one_row():
    with pytest.raises(BindingError, match="one row is served by one component"):
        Local(read=Acquisition.get_acq_mode, write=StreamHandler.set_autosave)


def test_a_method_of_an_unregistered_class_is_refused():
    with pytest.raises(BindingError, match="not a method of a registered component"):
        Local(read=SimplonClient.keys)
    with pytest.raises(BindingError, match="not a method of a component class"):
        Local(read=len)


def test_a_row_with_both_simplon_and_local_is_refused():
    with pytest.raises(BindingError, match="both a SIMPLON subsystem and local"):
        Param("seqid", "X", "R", "ALL", "x", subsystem="detector",
              local=Local(read=Acquisition.get_seqid))


def test_a_row_served_by_nothing_is_refused():
    with pytest.raises(BindingError, match="names neither local methods nor a SIMPLON"):
        Param("orphan", "X", "R", "ALL", "x", subsystem="detector")


# -- every row of the table resolves -------------------------------------------------------
@pytest.mark.parametrize("row", LOCAL_ROWS, ids=[row.name for row in LOCAL_ROWS])
def test_every_local_row_is_bound_to_a_registered_component_with_the_right_arity(row):
    binding = row.local
    assert binding.component in registered_components()
    roles = {role for role, fn in binding.roles() if fn is not None}
    expected = {"R": {"read"}, "RW": {"read", "write"}, "W": {"write"}, "--": {"run"}}
    assert roles == expected[row.access]
    for role in roles:
        fn = binding.method(role)
        # The function is the component's own attribute of that name.
        assert getattr(binding.component, fn.__name__) is fn
        assert binding.accepts(role, ROLE_ARGS[role]), (row.name, role)
    if row.set_reads:
        assert binding.accepts("read", 1)


def test_a_controller_has_an_instance_of_every_bound_component(tmp_path):
    from eiger_server.control.controller import EigerController
    ctrl = EigerController(ServerOptions(dcu_host="127.0.0.1", dcu_port=free_port(),
                                         http_timeout=1.0))
    try:
        for row in LOCAL_ROWS:
            served_by = ctrl.component(row.local.component)
            assert isinstance(served_by, row.local.component)
            # Components get narrow interfaces, never the controller itself.
            assert all(value is not ctrl for value in vars(served_by).values()), row.name
        # A read that takes no argument says so instead of ignoring it.
        with pytest.raises(ParameterError, match="'seqid' does not take 1 argument"):
            ctrl.get("seqid", ["7"])
    finally:
        ctrl.close()


@pytest.mark.parametrize("protocol,implementation", [
    ("DetectorConfig", "eiger_server.control.config.CachedConfig"),
    ("FileSettings", "eiger_server.control.settings.Settings"),
    ("CountingStream", "eiger_server.stream.handler.StreamHandler"),
])
def test_what_the_controller_wires_provides_each_interface(protocol, implementation):
    """Protocols are not checked at run time: check the wired classes by name."""
    from eiger_server.components import protocols
    module, name = implementation.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    members = [m for m in vars(getattr(protocols, protocol)) if not m.startswith("_")]
    instance_attrs = {"data_directory", "prefix"}      # Settings sets these in __init__
    for member in members:
        assert hasattr(cls, member) or member in instance_attrs, f"{name} lacks {member}"


# -- options ---------------------------------------------------------------------------------
def test_parser_defaults_are_the_dataclass_defaults():
    # Every option has a field of the same name, with the same default.
    assert vars(build_parser().parse_args([])) == dataclasses.asdict(ServerOptions())


def test_stream_workers_is_an_option_and_reaches_the_stream(tmp_path):
    from helpers import StubController
    assert parse_args([]).stream_workers == 2
    assert parse_args(["--stream-workers", "3"]).stream_workers == 3
    for bad in ("0", "x", "65"):
        with pytest.raises(SystemExit):
            parse_args(["--stream-workers", bad])
    handler = StubController(tmp_path, stream_workers=3).stream_handler()
    try:
        assert handler.workers == 3
    finally:
        handler.close()


def test_fake_profile_choices_are_the_fakes_presets():
    """--fake-profile is checked by the parser against the fake DCU's own presets."""
    from eiger_server.fakedcu.device.profiles import PROFILES
    from eiger_server.options import FAKE_PROFILES, parse_args
    assert FAKE_PROFILES == tuple(PROFILES)
    with pytest.raises(SystemExit):
        parse_args(["--fake-dcu", "--fake-profile", "bogus"])
