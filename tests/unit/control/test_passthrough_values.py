"""Values written through a SIMPLON name the table does not list keep their JSON type."""
from __future__ import annotations

import pytest

from eiger_server.options import ServerOptions
from eiger_server.control.controller import EigerController
from eiger_server.control.table import Param
from eiger_server.errors import ParameterError


@pytest.fixture
def ctrl():
    controller = EigerController(ServerOptions(dcu_host="127.0.0.1", dcu_port=9))
    yield controller
    controller.close()


ROW = Param("some/array", "passthrough", "RW", "ALL", "", subsystem="detector", task="config")


@pytest.mark.parametrize("value_type, text, expected", [
    ("int[]", "1 2 3", [1, 2, 3]),
    ("uint[]", "[4, 5]", [4, 5]),
    ("float[]", "0.5 1e-3", [0.5, 0.001]),
    ("string[]", "a b", ["a", "b"]),
])
def test_arrays_are_sent_as_arrays_of_their_type(ctrl, value_type, text, expected):
    assert ctrl.to_dcu(ROW, "some/array", [text], {"value_type": value_type}) == expected


def test_a_non_number_in_a_number_array_is_refused(ctrl):
    with pytest.raises(ParameterError, match="'x' is not a number"):
        ctrl.to_dcu(ROW, "some/array", ["1 x"], {"value_type": "float[]"})
