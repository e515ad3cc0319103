"""The help page: renders cleanly and agrees with the server.

help/eiger.rst is rendered with tools/rst2spechelp.py (spec's plain-text help
format, and HTML) with docutils stopping on any warning.  Its parameter
tables must list exactly the rows of eiger_server.control.table.TABLE (name, mode,
versions), every option of ``eiger_server --help`` must be documented, and
so must every macro the macro checker requires.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple

import docutils.core
import docutils.utils
import pytest
from docutils import nodes

from eiger_server.control.table import TABLE

ROOT = Path(__file__).resolve().parents[2]
RST = ROOT / "help" / "eiger.rst"
TOOLS = ROOT / "tools"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


rst2spechelp = _load("rst2spechelp")
gen_param_table = _load("gen_param_table")
check_macros = _load("check_macros")

# The options the requirements and the server's design name; --help may add more.
REQUIRED_OPTIONS = {"-a", "-P", "-p", "-d", "-k", "-l", "-L", "-v", "-V", "-r", "--rotate",
                    "--rotate90", "--rotate180", "--rotate270", "--flipv", "--fliph",
                    "--bind", "--fake-dcu"}


@pytest.fixture(scope="module")
def doctree() -> nodes.document:
    return docutils.core.publish_doctree(
        RST.read_text(encoding="utf-8"), source_path=str(RST),
        settings_overrides=dict(rst2spechelp.STRICT_SETTINGS))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Tuple[str, str]:
    out = tmp_path_factory.mktemp("help")
    text_path, html_path = out / "eiger", out / "eiger.html"
    rst2spechelp.render_text(str(RST), str(text_path))
    rst2spechelp.render_html(str(RST), str(html_path))
    return text_path.read_text(encoding="utf-8"), html_path.read_text(encoding="utf-8")


def _findall(node: nodes.Node, kind) -> List[nodes.Node]:
    finder = getattr(node, "findall", None) or node.traverse
    return list(finder(kind))


def _param_rows(doctree: nodes.document) -> List[Tuple[str, str, str]]:
    """(name, mode, ver) of every row of the tables headed Name/Mode/Ver/Meaning."""
    rows = []
    for table in _findall(doctree, nodes.table):
        head = table.next_node(nodes.thead)
        if head is None:
            continue
        header = tuple(e.astext().strip() for e in head.next_node(nodes.row).children)
        if header != gen_param_table.HEADER:
            continue
        for row in table.next_node(nodes.tbody).children:
            cells = [e.astext().strip() for e in row.children]
            rows.append((cells[0], cells[1], cells[2]))
    return rows


# -- rendering -----------------------------------------------------------------

def test_renders_to_spec_text_and_html_without_warnings(rendered):
    text, html = rendered
    lines = text.splitlines()
    # spec's layout: title first, main headings in capitals at the margin.
    assert "eiger - DECTRIS EIGER detectors through eiger_server" in lines[0]
    headings = [line for line in lines if line and not line[0].isspace()]
    assert headings == ["DESCRIPTION", "INSTALLATION", "CONFIGURATION", "USAGE", "SERVER",
                        "MACROS", "PARAMETERS", "SEE ALSO"]
    assert max(len(line) for line in lines) <= 78
    # reStructuredText markup is gone from the text.
    assert "``" not in text and not re.search(r"^\s*\.\. ", text, re.M)
    assert "<h1" in html and "eiger_scan_head(id, unit, filename)" in html


def test_rendered_text_holds_the_parameter_table(rendered):
    text, _ = rendered
    for row in TABLE:
        pattern = rf"^\s+{re.escape(row.name)}\s+{re.escape(row.access)}\s+" \
                  rf"{re.escape(row.versions)}\s+\S"
        assert re.search(pattern, text, re.M), f"{row.name} is missing from the rendered table"


def test_warnings_stop_the_rendering(tmp_path):
    bad = tmp_path / "bad.rst"
    bad.write_text("Title\n=====\n\nText with an `unclosed reference\n", encoding="utf-8")
    with pytest.raises(docutils.utils.SystemMessage):
        rst2spechelp.render_text(str(bad), str(tmp_path / "bad"))
    result = subprocess.run([sys.executable, str(TOOLS / "rst2spechelp.py"), str(bad),
                             "-o", str(tmp_path / "bad")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1
    assert "bad.rst" in result.stderr


# -- the parameter table agrees with the server --------------------------------

def test_parameter_table_matches_server_table(doctree):
    rows = _param_rows(doctree)
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)), "a parameter is listed twice"
    documented: Dict[str, Tuple[str, str]] = {name: (mode, ver) for name, mode, ver in rows}
    server = {row.name: (row.access, row.versions) for row in TABLE}
    assert sorted(set(server) - set(documented)) == [], "server names missing from the help"
    assert sorted(set(documented) - set(server)) == [], "help names the server does not have"
    differing = {name: (documented[name], server[name]) for name in server
                 if documented[name] != server[name]}
    assert differing == {}


def test_generated_table_file_is_up_to_date():
    assert gen_param_table.main(["--check"]) == 0


def test_table_comparison_catches_a_difference(tmp_path, doctree):
    # A doctored copy of the table: one row's mode changed, one row dropped.
    text = (RST.parent / "params_table.rst").read_text(encoding="utf-8")
    text = text.replace("   * - ``count_time``\n     - ``RW``", "   * - ``count_time``\n     - ``R``")
    text = re.sub(r"   \* - ``desc``\n(     - .*\n){3}", "", text)
    (tmp_path / "params_table.rst").write_text(text, encoding="utf-8")
    page = tmp_path / "page.rst"
    page.write_text("Page\n====\n\n.. include:: params_table.rst\n", encoding="utf-8")
    tree = docutils.core.publish_doctree(page.read_text(), source_path=str(page),
                                         settings_overrides=dict(rst2spechelp.STRICT_SETTINGS))
    rows = {name: (mode, ver) for name, mode, ver in _param_rows(tree)}
    assert rows["count_time"] == ("R", "ALL")
    assert "desc" not in rows


# -- options and macros are documented ----------------------------------------

def _help_options() -> Set[str]:
    result = subprocess.run([sys.executable, "-m", "eiger_server", "--help"], capture_output=True,
                            text=True, timeout=60, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    options: Set[str] = set()
    for line in result.stdout.splitlines():
        match = re.match(r"^ {2}(-.*?)(?: {2,}|$)", line)
        if match:
            for part in match.group(1).split(", "):
                options.add(part.split()[0])
    return options


def test_every_server_option_is_documented(doctree):
    documented = {opt.astext().split()[0] for opt in _findall(doctree, nodes.option_string)}
    from_help = _help_options()
    assert REQUIRED_OPTIONS <= from_help, "eiger_server --help lacks options of the design"
    assert sorted(from_help - documented) == [], "options of --help missing from the help page"
    assert sorted(documented - from_help) == [], "the help page documents unknown options"


def test_every_required_macro_is_documented(doctree):
    terms = set()
    for term in _findall(doctree, nodes.term):
        terms.add(re.split(r"[\s(]", term.astext().strip(), maxsplit=1)[0])
    missing = [name for name in check_macros.REQUIRED_MACROS if name not in terms]
    assert missing == []
