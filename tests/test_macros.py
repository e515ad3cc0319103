"""The spec macro file, checked statically (spec itself is not available).

tools/check_macros.py parses macros/eiger.mac (quotes, braces, def bodies),
checks that every macro the requirements name is defined, and that every
literal name passed to image_par() is one the server's table knows.  These
tests run it on the real file and on deliberately broken copies.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from eiger_server.params import lookup

ROOT = Path(__file__).resolve().parent.parent
MACROS = ROOT / "macros" / "eiger.mac"
CHECKER = ROOT / "tools" / "check_macros.py"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_macros", CHECKER)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_macros", module)
    spec.loader.exec_module(module)
    return module


check_macros = _load_checker()


def _source() -> str:
    return MACROS.read_text(encoding="utf-8")


def _broken_copy(tmp_path: Path, old: str, new: str, count: int = 1) -> Path:
    text = _source()
    assert old in text, f"the test's anchor {old!r} is no longer in eiger.mac"
    path = tmp_path / "broken.mac"
    path.write_text(text.replace(old, new, count), encoding="utf-8")
    return path


def _run_cli(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECKER), str(path)], capture_output=True,
                          text=True, timeout=60, cwd=str(ROOT))


# -- the real file ------------------------------------------------------------

def test_eiger_mac_passes_the_checker():
    assert check_macros.check_file(str(MACROS)) == []


def test_checker_command_line_accepts_eiger_mac():
    result = _run_cli(MACROS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_every_required_macro_is_defined():
    parsed = check_macros.parse_macros(_source())
    missing = [name for name in check_macros.REQUIRED_MACROS if name not in parsed.defined]
    assert missing == []
    # The hooks are macro functions with the arguments the requirements give.
    for signature in ("def eiger_scan_head(id, unit, filename) '",
                      "def eiger_scan_tail(id, unit) '",
                      "def eiger_precount(unit, filename) '",
                      "def eiger_read_acq(unit, arr) '",
                      "def eiger_save_acq(id, filename, arr) '"):
        assert signature in _source()


def test_image_par_names_are_seen_and_known():
    parsed = check_macros.parse_macros(_source())
    names = {name for name, _ in parsed.image_par_names}
    # The checker really reads the calls: the central parameters are there.
    for expected in ("arm", "disarm", "transfer", "delete", "save", "cmd_executing",
                     "get_answer", "stream_autosave", "data_directory", "name_pattern",
                     "stream_prefix", "overwrite_images", "acq_mode", "threshold/1/mode",
                     "photon_energy", "kill", "restart", "filelist", "files"):
        assert expected in names
    unknown = sorted(n for n in names - check_macros.SPEC_OWN_KEYS if lookup(n) is None)
    assert unknown == []


def test_settings_are_macro_globals():
    text = _source()
    assert "global EIGER_PAR[] EIGER_UNIT" in text
    assert "unglobal EIGER_PAR EIGER_UNIT" in text
    assert 'rdef EIGER_DATA sprintf("IMG_DATA_%d", unit)' in text


# -- broken copies --------------------------------------------------------------

def test_missing_macro_fails(tmp_path):
    path = _broken_copy(tmp_path, "def eigerls '", "def eiger_list_files '")
    messages = check_macros.check_file(str(path))
    assert any("macro eigerls is required" in m for m in messages), messages
    result = _run_cli(path)
    assert result.returncode == 1
    assert "eigerls" in result.stdout


def test_unknown_image_par_name_fails(tmp_path):
    path = _broken_copy(tmp_path, 'image_par(unit, "cmd_executing")',
                        'image_par(unit, "cmd_executin")')
    messages = check_macros.check_file(str(path))
    assert len(messages) == 1, messages
    assert "'cmd_executin' is not in the server's parameter table" in messages[0]
    assert _run_cli(path).returncode == 1


def test_unknown_name_inside_a_command_string_fails(tmp_path):
    path = _broken_copy(tmp_path, '"filelist", "$1"', '"filelists $1"')
    messages = check_macros.check_file(str(path))
    assert any("'filelists'" in m for m in messages), messages


def test_unbalanced_brace_fails(tmp_path):
    path = _broken_copy(tmp_path, 'if (EIGER_PAR[unit]["init"] == 1)\n',
                        'if (EIGER_PAR[unit]["init"] == 1) {\n')
    messages = check_macros.check_file(str(path))
    assert any("never closed" in m and "_eiger_defaults" in m for m in messages), messages
    assert _run_cli(path).returncode == 1


def test_extra_closing_brace_fails(tmp_path):
    path = _broken_copy(tmp_path, "    return(image_par(unit, \"responsive\") ? 1 : 0)\n}'",
                        "    return(image_par(unit, \"responsive\") ? 1 : 0)\n}}'")
    messages = check_macros.check_file(str(path))
    assert any("unbalanced '}'" in m for m in messages), messages


def test_unterminated_double_quote_fails(tmp_path):
    path = _broken_copy(tmp_path, 'printf("eiger: latest image saved as %s\\n", f)',
                        'printf("eiger: latest image saved as %s\\n, f)')
    messages = check_macros.check_file(str(path))
    assert any('unterminated " string' in m for m in messages), messages
    assert _run_cli(path).returncode == 1


def test_unterminated_def_body_fails(tmp_path):
    # An apostrophe in a def body ends the body early, as it would in spec.
    path = _broken_copy(tmp_path, "# Nothing to do, on purpose:",
                        "# Nothing to do, it's on purpose:")
    messages = check_macros.check_file(str(path))
    assert any("unterminated ' string" in m for m in messages), messages
    assert _run_cli(path).returncode == 1


def test_checker_reports_line_numbers():
    text = "def a '{\n  x = 1\n'\ndef b '{ image_par(0, \"no_such_name\") }'\n"
    messages = check_macros.check_text(text, required=("a", "b"), lookup=lookup)
    assert messages == [
        "line 1: '{' in the body of a is never closed (add '}')",
        "line 4: image_par name 'no_such_name' is not in the server's parameter table "
        "(see eiger_server/params.py)",
    ]


@pytest.mark.parametrize("call, name", [
    ('image_par(u, "transfer", pat)', "transfer"),
    ('image_par(u, "roisum 1 2 3 4")', "roisum"),
    ('image_par(u, sprintf("monitor_save %d %d", s, i))', "monitor_save"),
    ('image_par(u, "filelist " pat)', "filelist"),
])
def test_name_extraction(call, name):
    parsed = check_macros.parse_macros("def m '{ %s }'\n" % call)
    assert parsed.image_par_names == [(name, 1)]
