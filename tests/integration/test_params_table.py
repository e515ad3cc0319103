"""The image_par table, row by row, against the fake DCU (API 1.6.0 and 1.8.0).

The cases are generated from the table itself; the table is checked against
the requirements document's parameter tables.
"""
from __future__ import annotations

import re

import pytest

from eiger_server.control import table
from eiger_server.values import format_value
from eiger_server.errors import (EigerError, NotSupported, ParameterError, UnknownParameter)

from helpers import SHARED, wait_for

REQUIREMENTS = SHARED / "reference" / "003_cdbc6bd115d18cd9.txt"

# Commands with effects a test must not fire through the generic loop (they
# end the process or the DCU); each has its own test elsewhere.
DESTRUCTIVE = {"kill", "reboot", "shutdown", "restart", "delete", "transfer",
               "pixelmask_load", "pixelmask_calibrate", "arm", "trigger", "disarm", "cancel",
               "abort", "save", "monitor_save", "monitor_save_threshold", "monitor_pop",
               "pixelmask_save", "flatfield_save", "writer_clear"}

# Where the requirements' version column and a real DCU disagree, the DCU
# decides: SIMPLON 1.6 has the monitor too (SIMPLON.md), not only ">1.7".
MONITOR_ROWS = ("monitor_state", "monitor_error", "monitor_dropped", "buffer_fill_level",
                "monitor_mode", "discard_new", "buffer_size", "monitor_clear",
                "monitor_initialize", "monitor_images", "monitor_save",
                "monitor_save_threshold", "monitor_pop")
REAL_DCU_VERSIONS = {name: ("ALL", ">1.7") for name in MONITOR_ROWS}


def requirement_rows():
    """(name, mode, ver) of every row in the requirements' parameter tables."""
    text = REQUIREMENTS.read_text()
    start = text.index("Name Mode Ver Reference doc")
    end = text.index("Note, the current version", start)
    rows = []
    for line in text[start:end].splitlines()[1:]:
        match = re.match(r"(\S+) (RW|R|W|--) (ALL|[<>]?\d\.\d) ", line.strip() + " ")
        if match:
            rows.append(match.groups())
    return rows


@pytest.mark.needs_shared(REQUIREMENTS)
def test_every_requirement_name_is_in_the_table_with_its_access_and_version():
    rows = requirement_rows()
    assert len(rows) >= 140, "the requirements table was not parsed"
    for name, mode, ver in rows:
        row = table.lookup(name)
        assert row is not None, f"{name} missing from table.TABLE"
        assert row.access == mode, f"{name}: access {row.access}, requirements say {mode}"
        if name in REAL_DCU_VERSIONS:
            assert (row.versions, ver) == REAL_DCU_VERSIONS[name], name
            continue
        assert row.versions == ver, f"{name}: versions {row.versions}, requirements say {ver}"


def test_table_names_are_unique_and_well_formed():
    names = table.names()
    assert len(names) == len(set(names))
    for row in table.TABLE:
        assert row.access in ("R", "RW", "W", "--"), row
        assert row.doc, f"{row.name} has no meaning for the help page"
        assert (row.local is None) or (row.subsystem is None), row
        assert row.local or row.subsystem or row.unsupported, f"{row.name} maps nowhere"


@pytest.mark.parametrize("version,expected", [
    ("1.6.0", {"buffer_free", "writer_time"}),
    ("1.8.0", {"threshold_energy1", "stream_version", "reboot", "writer_files"}),
])
def test_version_column_decides_availability(version, expected):
    for name in expected:
        assert table.lookup(name).available_in(version), (name, version)
    other = "1.8.0" if version == "1.6.0" else "1.6.0"
    for name in expected:
        assert not table.lookup(name).available_in(other), (name, other)
    # the monitor is on both (a real DCU decides, not the requirements' >1.7)
    assert table.lookup("monitor_mode").available_in(version)


def _rows(predicate):
    return [pytest.param(row, id=row.name) for row in table.TABLE if predicate(row)]


@pytest.mark.parametrize("row", _rows(lambda r: r.unsupported is not None))
def test_unsupported_rows_answer_a_clear_error(controller, row):
    with pytest.raises(NotSupported, match="not supported"):
        controller.get(row.name)


@pytest.mark.parametrize("row", _rows(lambda r: r.subsystem and r.task != "command"))
def test_simplon_value_rows_read_or_name_the_version_they_need(controller, fake_dcu, row):
    name = row.name.replace("link/n", "link/0")
    if not row.available_in(controller.version):
        with pytest.raises(ParameterError, match="SIMPLON"):
            controller.get(name)
        return
    answer = controller.get(name)
    assert isinstance(answer, str)
    if row.conv in ("enabled", "bool"):
        assert answer in ("0", "1")
    if row.task == "config" and row.name not in ("pixel_mask_applied",):
        # The answer is the device's own value (read from the fake DCU's model,
        # not through the REST client), in spec's notation.
        key = row.simplon_key(controller.version, table.pattern_number(row, name))
        value = fake_dcu.model.get(row.subsystem, "config", key)["value"]
        if row.conv == "enabled":
            value = value == "enabled"
        assert answer == format_value(value), (name, answer, value)


@pytest.mark.parametrize("row", _rows(lambda r: r.subsystem and r.task == "config"
                                      and r.access == "RW"))
def test_simplon_rw_rows_write_and_read_back(controller, row):
    if not row.available_in(controller.version):
        with pytest.raises(ParameterError, match="SIMPLON"):
            controller.set(row.name, ["1"])
        return
    key = row.simplon_key(controller.version)
    description = controller.simplon.get(row.subsystem, "config", key)
    current = controller.get(row.name)
    if description.get("access_mode") == "r":
        # The DCU's own access mode decides (a real DCU marks some of the
        # requirements' RW names read-only): a clear error, nothing sent.
        with pytest.raises(ParameterError, match="the detector does not allow writing"):
            controller.set(row.name, [current or "1"])
        assert controller.get(row.name) == current
        return
    if row.conv in ("enabled", "bool"):
        new = "0" if current == "1" else "1"
    elif description.get("allowed_values"):
        choices = [v for v in description["allowed_values"] if str(v) != current]
        new = str(choices[0] if choices else current)
    elif description.get("value_type") in ("float", "int", "uint"):
        low, high = description.get("min"), description.get("max")
        value = float(current) if current else 1.0
        candidate = value * 1.5 + 1 if value >= 0 else value / 2
        if high is not None and candidate > high:
            candidate = (value + high) / 2 if value != high else (low + high) / 2
        if low is not None and candidate < low:
            candidate = low
        if description.get("value_type") != "float":
            candidate = int(candidate)
        new = str(candidate)
    else:
        new = "test_value"
    answer = controller.set(row.name, [new])
    assert answer == controller.get(row.name)
    if row.name not in ("count_time", "frame_time", "photon_energy", "wavelength"):
        # Values the DCU does not adjust read back as written.
        assert float(answer) == pytest.approx(float(new)) if _numeric(new) else answer == new


def _numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("row", _rows(lambda r: r.access == "R" and not r.set_reads))
def test_read_only_rows_refuse_writes(controller, row):
    with pytest.raises(EigerError) as info:
        controller.set(row.name.replace("link/n", "link/0"), ["1"])
    assert isinstance(info.value, (ParameterError, NotSupported))


@pytest.mark.parametrize("row", _rows(lambda r: r.name not in DESTRUCTIVE and not r.unsupported))
def test_no_row_crashes_on_any_input(controller, row):
    """Whatever spec sends, the answer is a value or a clear EigerError."""
    name = row.name.replace("link/n", "link/0")
    for call, args in ((controller.get, []), (controller.get, ["garbage", "1e400"]),
                       (controller.set, ["nan"]), (controller.set, ["-1"]), (controller.set, [])):
        try:
            answer = call(name, args)
        except EigerError as exc:
            assert str(exc), f"{name}: empty error message"
        else:
            assert isinstance(answer, str)
        if row.background:
            wait_for(lambda: controller.get("cmd_executing") == "0", 30,
                     what=f"{name} background job to end")


def test_out_of_range_and_not_allowed_values_are_refused_before_the_dcu(controller, monkeypatch):
    sent = []
    original = controller.simplon.set_config
    monkeypatch.setattr(controller.simplon, "set_config",
                        lambda *a: sent.append(a) or original(*a))
    with pytest.raises(ParameterError, match="minimum|maximum"):
        controller.set("nimages", ["0"])
    with pytest.raises(ParameterError, match="not allowed"):
        controller.set("trigger_mode", ["sometimes"])
    with pytest.raises(ParameterError, match="not a number"):
        controller.set("count_time", ["fast"])
    with pytest.raises(ParameterError, match="finite"):
        controller.set("photon_energy", ["nan"])
    assert sent == []


def test_values_are_programmed_only_when_they_change(controller, monkeypatch):
    sent = []
    original = controller.simplon.set_config
    monkeypatch.setattr(controller.simplon, "set_config",
                        lambda *a: sent.append(a) or original(*a))
    controller.set("nimages", ["3"])
    controller.set("nimages", ["3"])
    assert [a[1] for a in sent] == ["nimages"]


def test_changed_names_invalidate_the_cache(controller):
    controller.set("frame_time", ["0.01"])
    controller.set("count_time", ["0.01"])
    assert controller.config_value("frame_time") == pytest.approx(0.01, rel=0.01)
    controller.set("count_time", ["0.5"])
    # The DCU raised frame_time; the cached value must follow.
    assert controller.config_value("frame_time") >= 0.5
    energy_before = float(controller.get("threshold_energy"))
    controller.set("photon_energy", [str(2 * energy_before + 2000)])
    assert float(controller.get("wavelength")) == pytest.approx(
        12398.4198 / (2 * energy_before + 2000), rel=1e-3)


def test_unknown_name_suggests_the_closest(controller):
    with pytest.raises(UnknownParameter, match="count_time"):
        controller.get("count_tme")
    with pytest.raises(UnknownParameter):
        controller.get("../../system/api/1.8.0/command/reboot")


def test_unified_status_names(controller):
    state = controller.get("state")
    assert state == controller.get("status") == controller.get("detector_status")
    assert float(controller.get("temperature")) > 0
    assert float(controller.get("humidity")) >= 0
    assert controller.get("simplon_version") == controller.version
    if controller.version.startswith("1.6"):
        assert int(controller.get("buffer_free")) > 0
        assert controller.get("link/0") == "up"      # a real 1.6.6 DCU serves link_0
    else:
        assert controller.get("link/0")
        assert float(controller.get("threshold_energy1")) > 0
        # A SIMPLON name the table does not list passes straight through.
        assert controller.get("threshold/1/energy") == controller.get("threshold_energy1")


def test_arm_trigger_disarm_and_seqid(controller):
    controller.set("nimages", ["2"])
    controller.set("trigger_mode", ["ints"])
    controller.set("count_time", ["0.01"])
    seq = controller.get("arm")
    assert controller.get("state") == "ready"
    assert controller.get("seqid") == seq
    controller.get("trigger")
    wait_for(lambda: not controller.acq.counting(), 10, what="trigger to finish")
    assert controller.acq.take_error() is None
    controller.get("disarm")
    assert controller.get("state") == "idle"
    assert int(controller.get("arm")) == int(seq) + 1


def test_max_trigger_is_the_dcu_limit(controller):
    limit = controller.simplon.get("detector", "config", "ntrigger")["max"]
    assert int(controller.get("max_trigger")) == int(limit)
    with pytest.raises(ParameterError, match="maximum"):
        controller.set("ntrigger", [str(int(limit) + 1)])


def test_a_dcu_refusal_of_a_passed_through_name_reaches_spec(controller, fake_dcu):
    if controller.version.startswith("1.6"):
        pytest.skip("threshold/1/energy exists from SIMPLON 1.8 on")
    from eiger_server.errors import DetectorError
    fake_dcu.faults.update({"error500": {"threshold/1/energy": "threshold out of calibration"}})
    with pytest.raises(DetectorError, match="threshold out of calibration"):
        controller.set("threshold/1/energy", ["5000"])
