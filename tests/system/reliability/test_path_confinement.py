"""Paths and security: what spec sends cannot reach past data_directory (or the
documented /tmp defaults), cannot make the server ask the DCU for anything
but /data/<file>, and never reaches a shell. The listening address is
checked too: all interfaces by default (spec may run on another host),
one address with --bind.
"""
from __future__ import annotations

import ast
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import List

import numpy as np
import pytest

from eiger_server.wire.client import WireClient, WireError
from eiger_server.fakedcu.app import FakeDCUApp
from helpers import ROOT, ServerProcess, server_args_for, wait_for
from test_dcu_faults import configure, status, stream_setup
from test_disk_faults import make_h5

DCU_FILES = ["a_data_000001.h5", "b_data_000001.h5"]
# A name the DCU lists although no client should ever use it as a path.
EVIL_ON_DCU = "x%2f..%2f..%2fdetector%2fapi%2f1.8.0%2fcommand%2farm_data_000001.h5"

PATTERNS = [
    "../detector/api/1.8.0/command/arm",
    "%2e%2e/detector/api/1.8.0/command/arm",
    "%2e%2e%2fdetector%2fapi%2f1.8.0%2fcommand%2farm",
    "..%2f..%2fsystem%2fapi%2f1.8.0%2fcommand%2freboot",
    "%252e%252e%252fdetector",
    "a_data_000001.h5/../../detector/api/1.8.0/command/disarm",
    "a_data_000001.h5%2f..%2f..%2fdetector",
    "a_data_000001.h5?x=../../detector",
    "a_data_000001.h5#../detector",
    "a_data_000001.h5%00",
    "..\\..\\detector",
    "/detector/api/1.8.0/command/arm",
    "//evil.example/data/x",
    "http://evil.example/x",
    "\uff0e\uff0e\uff0fdetector",          # full-width dots and slash
    "\u2024\u2024/detector",               # one-dot leaders
    "$(reboot)", "`reboot`", ";reboot", "|reboot", "&reboot", "~root",
    ".hidden_data_000001.h5", "..", ".", "*/..", "[.][.]/x",
]


@pytest.fixture
def rig(tmp_path):
    directory = tmp_path / "dcu-files"
    directory.mkdir()
    for value, name in enumerate(DCU_FILES):
        make_h5(directory / name, rows=16, cols=16, value=value)
    make_h5(directory / EVIL_ON_DCU, rows=16, cols=16)
    app = FakeDCUApp(api="1.8.0", model="500K", data_dir=directory)
    app.start()
    server = ServerProcess(server_args_for(app), tmp_path)
    try:
        with WireClient("127.0.0.1", server.port, 30) as c:
            configure(c)
            yield app, server, c
    finally:
        server.stop()
        app.stop()


def run_job(c: WireClient, name: str, arg: str) -> str:
    assert c.set(name, arg) == "started"
    wait_for(lambda: c.get("cmd_executing") == "0", 20, what=name)
    return c.get("get_answer")


def requests_since(app: FakeDCUApp, mark: int) -> List[tuple]:
    return [(m, p) for m, p, _ in list(app.http.request_log)[mark:]]


# ------------------------------------------------------------------ DCU URLs

def test_transfer_and_delete_patterns_reach_only_data_urls(rig, tmp_path):
    app, server, c = rig
    data = tmp_path / "data"
    c.set("data_directory", data)
    c.set("auto_delete", 1)
    mark = len(app.http.request_log)
    for pattern in PATTERNS:
        for command in ("transfer", "delete"):
            answer = run_job(c, command, pattern)
            assert answer.startswith("error:"), f"{command} {pattern!r}: {answer}"
        with pytest.raises(WireError):
            c.get("filelist", pattern)
    # The DCU may list a name that is not a plain file name: it is never used.
    answer = run_job(c, "transfer", "*")
    assert answer.startswith("error:") and "refused" in answer, answer
    seen = requests_since(app, mark)
    assert all(method == "GET" for method, _ in seen), [s for s in seen if s[0] != "GET"]
    data_paths = {path for _, path in seen if path.startswith("/data")}
    assert data_paths <= {"/data/"}, data_paths                # the index at most
    others = {path for _, path in seen if not path.startswith("/data")}
    assert all(path.startswith(("/filewriter/api/1.8.0/status/files",
                                "/filewriter/api/1.8.0/files",
                                "/detector/api/1.8.0/", "/stream/api/1.8.0/"))
               and "command" not in path for path in others), others
    assert sorted(app.model.filestore.list_files()) == sorted(DCU_FILES + [EVIL_ON_DCU])
    assert not data.exists() or os.listdir(data) == []
    # The same requests with good names do reach /data/<name>, and nothing else.
    mark = len(app.http.request_log)
    answer = run_job(c, "transfer", "?_data_000001.h5")
    assert answer.startswith("2 files transferred") and "deleted" in answer, answer
    touched = {(m, p) for m, p in requests_since(app, mark) if p.startswith("/data/")
               and p != "/data/"}
    # HEAD: the sizes a transfer checks (finished files, unchanged before deleting).
    assert touched == {(m, f"/data/{n}") for n in DCU_FILES
                       for m in ("HEAD", "GET", "DELETE")}
    assert sorted(os.listdir(data)) == DCU_FILES


def test_prefix_cannot_become_a_path(rig):
    app, server, c = rig
    mark = len(app.http.request_log)
    for prefix in ["../x", "a/b", "..", "/etc/eiger", "x/../../y"]:
        with pytest.raises(WireError, match="plain file name"):
            c.set("prefix", prefix)
    assert not [p for m, p in requests_since(app, mark) if m == "PUT"]
    assert c.set("prefix", "scan_$id") == "scan_$id"


# ------------------------------------------------------------------ local files

@pytest.fixture
def places(rig, tmp_path, request):
    """data_directory with one image taken, an outside directory holding a
    secret, and a symlink in data_directory pointing outside."""
    app, server, c = rig
    data = tmp_path / "data"
    # Outside both data_directory and /tmp (absolute /tmp names are allowed).
    outside = Path(tempfile.mkdtemp(prefix="eiger_reliability_", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(outside, ignore_errors=True))
    np.save(outside / "secret.npy", np.ones((514, 1030), dtype=np.uint32))
    stream_setup(c, data, "V1", nimages=1, prefix="img")
    c.set("stream_autosave", 0)
    c.set("trigger")
    assert status(c) == (True, "0")
    (data / "link").symlink_to(outside, target_is_directory=True)
    return c, data, outside


def test_file_names_from_spec_stay_inside(places, tmp_path):
    c, data, outside = places
    rel = os.path.relpath(outside, data)
    escapes = [f"{rel}/x", str(outside / "x"), "link/x", f"sub/../{rel}/x",
               "/etc/eiger_reliability", "/tmp/../etc/eiger_reliability",
               "/tmp/../" + str(outside / "x").lstrip("/")]
    for name in escapes:
        for command in ("save", "pixelmask_save", "flatfield_save", "stream_prefix"):
            with pytest.raises(WireError, match="outside|refused|must not"):
                c.set(command, name)
    for name in [f"{rel}/secret.npy", str(outside / "secret.npy"), "link/secret.npy",
                 "/tmp/../" + str(outside / "secret.npy").lstrip("/")]:
        with pytest.raises(WireError, match="outside"):
            c.set("pixelmask_load", name)
    for args in [("../x", "1"), ("1", "../x"), ("1", "1", "../x"), ("1/..", "1")]:
        with pytest.raises(WireError, match="not a number|not a whole number|takes"):
            c.set("monitor_save", *args)
    assert os.listdir(outside) == ["secret.npy"]
    assert not list(Path("/etc").glob("eiger_reliability*"))
    # Names inside are fine, sub-directories included.
    assert c.set("save", "sub/inside") == str(data / "sub" / "inside.tif")
    assert c.set("pixelmask_save", "mask") == str(data / "mask.npy")
    # The documented /tmp default stays available.
    tmp_name = f"/tmp/eiger_reliability_{uuid.uuid4().hex}.npy"
    try:
        assert c.set("pixelmask_save", tmp_name) == tmp_name
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    # data_directory itself is the user's choice; the names under it still cannot escape.
    other = tmp_path / "elsewhere"
    assert c.set("data_directory", other) == str(other)
    with pytest.raises(WireError, match="outside"):
        c.set("save", "../data/x")
    assert os.listdir(outside) == ["secret.npy"]


# ------------------------------------------------------------------ listening address

def listening_addresses(port: int) -> List[str]:
    """Local addresses of the LISTEN sockets on ``port`` (from /proc/net/tcp*)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hexport = local.split(":")
                if int(hexport, 16) == port and state == "0A":
                    found.append(address)
    return found


def can_connect(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def test_binds_all_interfaces_by_default_and_bind_restricts(rig, tmp_path):
    app, _, _ = rig
    default = ServerProcess(server_args_for(app), tmp_path)
    try:
        assert listening_addresses(default.port) in (["00000000"], ["0" * 32])
        assert can_connect("127.0.0.2", default.port)        # any local address answers
    finally:
        default.stop()
    bound = ServerProcess(server_args_for(app) + ["--bind", "127.0.0.1"], tmp_path)
    try:
        assert listening_addresses(bound.port) == ["0100007F"]
        assert can_connect("127.0.0.1", bound.port)
        assert not can_connect("127.0.0.2", bound.port)
    finally:
        bound.stop()


# ------------------------------------------------------------------ no shell

_FORBIDDEN_OS = {"system", "popen", "execl", "execle", "execlp", "execlpe", "execv", "execve",
                 "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv",
                 "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp"}


def shell_uses(source: str, filename: str = "<source>") -> List[str]:
    """Calls in ``source`` that could hand text to a shell or an interpreter."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        where = f"{filename}:{node.lineno}"
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            if func.value.id == "os" and func.attr in _FORBIDDEN_OS:
                found.append(f"{where} os.{func.attr}")
            if func.value.id == "subprocess" and node.args and not isinstance(
                    node.args[0], (ast.List, ast.Tuple, ast.Name)):
                found.append(f"{where} subprocess.{func.attr} with a command string")
            if func.value.id == "subprocess" and func.attr == "getoutput":
                found.append(f"{where} subprocess.getoutput")
        if isinstance(func, ast.Name) and func.id in ("eval", "exec", "system"):
            found.append(f"{where} {func.id}()")
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant)
                                               and keyword.value.value is False):
                found.append(f"{where} shell={ast.unparse(keyword.value)}")
    return found


def test_the_checker_finds_shell_uses():
    bad = ("import os, subprocess\nos.system('ls')\nsubprocess.run('ls', shell=True)\n"
           "subprocess.Popen(cmd, shell=flag)\neval(x)\nos.popen('x')\n")
    assert len(shell_uses(bad)) == 6
    assert shell_uses("subprocess.run(['ls', name], shell=False)\n") == []


def test_no_code_path_reaches_a_shell():
    package = ROOT / "eiger_server"
    found = []
    for path in sorted(package.rglob("*.py")):
        found += shell_uses(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []
