"""The spec macro file, checked statically (spec itself is not available).

tools/check_macros.py parses macros/eiger.mac (quotes, braces, def bodies),
checks that every macro the requirements name is defined, and that every
literal name passed to image_par() is one the server's table knows, and
applies the rules of issue 16 (what would misbehave in a real spec session).
These tests run it on the real file and on deliberately broken copies.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from eiger_server.control.table import lookup

ROOT = Path(__file__).resolve().parents[2]
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
        "(see eiger_server/control/table.py)",
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


# -- issue 16: mistakes that only show in a real spec session --------------------
# Each case puts one mistake back into a copy of eiger.mac; the checker must
# name it (and the fixed file passes, see test_eiger_mac_passes_the_checker).

SESSION_MISTAKES = [
    pytest.param('path = (filename == "") ? "" : _eiger_abspath(filename)', 'path = filename',
                 "eiger_scan_head gives data_directory the path 'dir', which may be relative",
                 id="scan-filename-sent-relative"),
    pytest.param("path = _eiger_join(CWD, path)", 'path = _eiger_join(".", path)',
                 "no macro makes a path absolute with CWD", id="no-cwd-anywhere"),
    pytest.param('    if (substr(dir, length(dir), 1) == "/")\n'
                 '        return(sprintf("%s%s", dir, name))\n', "",
                 'joins paths with "%s/%s" without looking at the last character',
                 id="double-slash-after-data-dir"),
    pytest.param('if (_ctime > 0)\n        image_par(unit, "preset", _ctime)',
                 'if (COUNT_TIME > 0)\n        image_par(unit, "preset", COUNT_TIME)',
                 "eiger_scan_head uses COUNT_TIME", id="count-time-in-scan-head"),
    pytest.param('if (_ctime > 0)\n        image_par(unit, "preset", _ctime)',
                 'image_par(unit, "preset", _ctime)',
                 "without testing _ctime > 0", id="monitor-count-programmed"),
    pytest.param('EIGER_PAR[unit]["img_point"] = -1\n',
                 'EIGER_PAR[unit]["img_point"] = -1\n'
                 '    fprintf(DATAFILE, "#IMG %d %d %d %s\\n", id, SCAN_N, 0, path)\n',
                 "#IMG lines are written in 2 places", id="two-img-writers"),
    pytest.param('if (EIGER_PAR[unit]["shm"] || _eiger_has_rois(unit))',
                 'if (EIGER_PAR[unit]["shm"])',
                 "eiger_read_acq reads the image only for the copy to shared memory",
                 id="read-acq-ignores-rois"),
    pytest.param('image_par(un, "filelist", "$1")', 'image_par(un, "filelist $1")',
                 "image_par name and value in one string", id="filelist-in-one-string"),
    pytest.param('    image_par(unit, "transfer", pattern)\n    ans',
                 '    image_par(unit, "transfer")\n    ans',
                 'image_par(unit, "transfer") without a value', id="transfer-without-value"),
    pytest.param('v = date("%H:%M")', "v = substr(date(), 12, 5)",
                 "cuts a part out of date()", id="time-cut-from-date"),
    pytest.param('sprintf("_eiger_cleanup(%d)\\n", unit), key)',
                 'sprintf("_eiger_cleanup(%d)\\n", unit), "eiger")',
                 'uses the cdef key "eiger" for every unit', id="shared-cdef-key"),
    pytest.param("_eiger_transfer(unit, _eiger_latest_pattern(unit))",
                 '_eiger_transfer(unit, EIGER_PAR[unit]["last_pattern"] "*")',
                 "string concatenation inside an argument of _eiger_transfer()",
                 id="concatenation-in-argument"),
    pytest.param('        if (c == ":")\n            c = "-"\n        out = sprintf("%s%s", out, c)',
                 '        out = out (c == ":" ? "-" : c)',
                 "'out (' in _eiger_dcu_name reads as a call", id="variable-then-parenthesis"),
    pytest.param("def _eiger_detector_menu(un) '{", "def _eiger_detector_menu(u) '{",
                 "_eiger_detector_menu has a variable named u", id="parameter-named-u"),
    pytest.param("    local pat, c\n\n    pat = _eiger_strip_index(base)",
                 "    local pat, c\n\n    p = _eiger_strip_index(base)",
                 "has a variable named p", id="variable-named-p"),
    pytest.param('    rdef EIGER_data sprintf("IMG_DATA_%d", unit)\n', "",
                 "macro EIGER_data is required but never defined", id="no-eiger-data-alias"),
    pytest.param("_eiger_arm_scan(unit, _eiger_scan_points())",
                 'image_par(unit, "ntrigger", image_par(unit, "max_trigger"))',
                 "sets ntrigger to max_trigger", id="ntrigger-max-trigger"),
    pytest.param('got = image_par(unit, "ntrigger")', "got = npts",
                 "and never reads it back", id="ntrigger-refusal-unnoticed"),
]


@pytest.mark.parametrize("old, new, expected", SESSION_MISTAKES)
def test_session_mistake_is_caught(tmp_path, old, new, expected):
    path = _broken_copy(tmp_path, old, new)
    messages = check_macros.check_file(str(path))
    assert any(expected in m for m in messages), messages
    assert _run_cli(path).returncode == 1


def test_relative_path_rule_follows_assignments():
    # A variable made absolute keeps the mark through dirname(); a plain
    # parameter does not; a later plain assignment drops the mark.
    text = ("def _abs(p1) '{ return(sprintf(\"%s/%s\", CWD, p1)) }'\n"
            "def ok(f1) '{\n  local a, d\n  a = _abs(f1)\n  d = _dirname(a)\n"
            "  image_par(0, \"data_directory\", d)\n}'\n"
            "def bad(f1) '{\n  local d\n  d = _abs(f1)\n  d = f1\n"
            "  image_par(0, \"data_directory\", d)\n}'\n")
    parsed = check_macros.parse_macros(text)
    problems = check_macros.rule_absolute_paths(parsed)
    assert [(p.line, "bad gives data_directory" in p.message) for p in problems] == [(12, True)]


def test_concatenation_rule_leaves_calls_and_operators_alone():
    text = ("def m '{\n  x = sprintf(\"%s%s\", a, f(b))\n  y = g(a[1] + 2, -3, \"s\" == t ? u1 : v1)\n"
            "  z = a b\n}'\n")
    assert check_macros.rule_grammar(check_macros.parse_macros(text)) == []
    bad = "def m '{\n  h(a \"x\")\n  h(\"x\" (y))\n}'\n"
    lines = [p.line for p in check_macros.rule_grammar(check_macros.parse_macros(bad))]
    assert lines == [2, 3]
