"""Attacks on the sandbox's process, memory and filesystem layers (issue 14), and the grader's promise never to
raise for a program's behaviour. Each test is an attack that worked on the sandbox before the trusted INIT,
the per-run cgroups and the private filesystem view; the python_guard is off because a real attacker
bypasses it (ctypes). Tests of a layer skip when `reward_code.py --status` reports it missing here."""

import os
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

import reward_code
from reward_code import SANDBOX_UID_BASE, grade_code_batch, sandbox_setup

REPO = Path(__file__).resolve().parents[1]


def fenced(code):
    return f"```python\n{code}\n```"


def needs(layer):
    state = sandbox_setup()["layers"][layer]
    if not state.startswith("active"):
        pytest.skip(f"{layer}: {state}")


def processes_named(name):
    """Pids of processes whose name (/proc/PID/comm, set by the attack with prctl) is `name`: other test runs
    on this machine may have their own programs running as sandbox uids."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and Path(f"/proc/{entry}/comm").read_text().strip() == name:
                found.append(int(entry))
        except OSError:
            continue
    return found


NAME_ME = "import ctypes\nctypes.CDLL(None).prctl(15, b'zerorl-escapee', 0, 0, 0)  # PR_SET_NAME\n"


ESCAPEE = NAME_ME + '''
import glob, os, time
os.setsid()  # out of the process group the grader kills
if os.fork() != 0:  # the original process stays behind; its child goes on to report the tests
    os.closerange(0, 1024)  # the grader sees its pipes close and thinks the run is over
    end = time.time() + 6
    while time.time() < end:
        for path in glob.glob("/tmp/zerorl-sandbox-*/solution.py"):
            try:
                with open(path, "w") as file:
                    file.write("def f():\\n    return 1\\n")
            except OSError:
                pass
        time.sleep(0.001)
    os._exit(0)
def f():
    return 1
'''


def test_setsid_escapee_cannot_rewrite_later_programs():
    if os.geteuid() != 0:
        pytest.skip("the escapee attacks other runs of its uid: only as root are there sandbox uids")
    spec = {"kind": "assert", "setup": "", "asserts": ["assert f() == 1"]}
    wrong = fenced("import time\ntime.sleep(0.3)\ndef f():\n    return 0")
    graded = grade_code_batch([fenced(ESCAPEE)] + [wrong] * 5, [spec] * 6, num_workers=1, python_guard=False,
                              timeout_s=1.0)
    assert graded["reward"][1:] == [0.0] * 5, graded
    assert processes_named("zerorl-escapee") == []  # nothing of any sandbox uid outlives grade_code_batch


def test_no_process_outlives_its_run():
    needs("pid namespace + trusted init")
    code = NAME_ME + ("import os, time\nos.setsid()\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n"
            "def f():\n    return 1")
    graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "", "asserts": ["assert f() == 1"]}],
                              python_guard=False)
    assert graded["correct"] == [True]
    assert processes_named("zerorl-escapee") == []


def test_nested_result_record_and_deep_tree_do_not_crash_the_grader():
    deep_record = ('import json, os\ndef f():\n    return 1\n'
                   'for fd in range(3, 64):\n'
                   '    try:\n        os.write(fd, (b"[" * 100000) + b"]" * 100000)\n    except OSError:\n        pass\n'
                   'os._exit(0)')
    deep_tree = ('import os\nfor _ in range(3000):\n    os.mkdir("d")\n    os.chdir("d")\n'
                 'open("f", "w").close()\nos.chmod(".", 0o500)\ndef f():\n    return 1')
    spec = {"kind": "assert", "setup": "", "asserts": ["assert f() == 1"]}
    good = fenced("def f():\n    return 1")
    before = stat.S_IMODE(os.stat(tempfile.gettempdir()).st_mode)
    graded = grade_code_batch([fenced(deep_record), fenced(deep_tree), good], [spec] * 3, num_workers=1,
                              python_guard=False)
    assert graded["reward"][0] == 0.0
    assert graded["correct"][2] is True  # the other programs' verdicts are untouched
    assert len(graded["sandbox_errors"]) == 3 and graded["sandbox_errors"][2] is False
    assert stat.S_IMODE(os.stat(tempfile.gettempdir()).st_mode) == before  # cleanup changed nothing outside
    assert not [p for p in Path(tempfile.gettempdir()).glob("zerorl-sandbox-*") if p.stat().st_uid >= SANDBOX_UID_BASE]


def test_remove_directory_never_touches_its_parent_and_never_raises(tmp_path):
    parent = tmp_path / "parent"
    directory = parent / "sandbox"
    directory.mkdir(parents=True)
    here = os.getcwd()
    try:  # longer than PATH_MAX: built (and removed) one level at a time
        os.chdir(directory)
        for _ in range(3000):
            os.mkdir("d")
            os.chdir("d")
        Path("file").write_text("x")
        os.chmod(".", 0o500)
    finally:
        os.chdir(here)
    parent.chmod(0o755)
    assert reward_code._remove_directory(str(directory)) is True
    assert stat.S_IMODE(parent.stat().st_mode) == 0o755
    assert reward_code._remove_directory(str(directory)) is True  # already gone: fine


def test_tmp_and_shm_litter_is_gone_after_the_run():
    needs("private /tmp /dev/shm")
    marker = f"zerorl-litter-{os.getpid()}"
    code = (f"for place in ('/tmp', '/dev/shm'):\n    for i in range(50):\n"
            f"        open(f'{{place}}/{marker}-{{i}}', 'w').write('x')\ndef f():\n    return 1")
    graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "", "asserts": ["assert f() == 1"]}],
                              python_guard=False)
    assert graded["correct"] == [True]  # the writes worked, inside the sandbox
    assert not list(Path("/tmp").glob(marker + "*")) and not list(Path("/dev/shm").glob(marker + "*"))


def test_host_unix_socket_is_not_reachable(tmp_path):
    needs("filesystem view")
    for place in (Path("/tmp"), tmp_path):
        path = place / f"zerorl-socket-{os.getpid()}"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        os.chmod(path, 0o777)
        server.listen(1)
        try:
            code = (f"import socket\nclient = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                    f"client.connect({str(path)!r})\ndef f():\n    return 1")
            graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "",
                                                        "asserts": ["assert f() == 1"]}], python_guard=False)
            assert graded["correct"] == [False]
        finally:
            server.close()
            path.unlink()


def test_world_readable_project_and_data_files_are_not_readable():
    needs("filesystem view")
    places = [REPO / "reward_code.py", REPO.parent / "shared" / "data"]
    for place in places:
        if not place.exists():
            continue
        code = (f"import os\nfound = os.path.exists({str(place)!r})\ndef f():\n    return found")
        graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "", "asserts": ["assert f() is False"]}],
                                  python_guard=False)
        assert graded["correct"] == [True], place


def test_stdlib_programs_still_import():
    code = ("import math, itertools, collections, re, heapq, fractions, json, functools, bisect, string, decimal\n"
            "import random, statistics, datetime, typing, dataclasses\ndef f():\n    return 1")
    graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "", "asserts": ["assert f() == 1"]}])
    assert graded["correct"] == [True]


def test_memory_is_limited_per_program_not_per_process():
    needs("cgroup memory/pids")
    code = '''
import os, time
children = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        block = bytearray(160 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(3)
        os._exit(0)
    children.append(pid)
time.sleep(2.0)
alive = 0
for pid in children:
    done, status = os.waitpid(pid, os.WNOHANG)
    alive += done == 0
def f():
    return alive
'''
    graded = grade_code_batch([fenced(code)], [{"kind": "assert", "setup": "", "asserts": ["assert f() == 6"]}],
                              python_guard=False, memory_mb=256)
    assert graded["correct"] == [False]  # not all six held their 160 MB under a 256 MB limit


def test_uid_is_reused_only_when_none_of_its_processes_is_left():
    if os.geteuid() != 0:
        pytest.skip("sandbox uids exist only as root")
    uid = reward_code._take_uid()
    try:
        pid = os.fork()
        if pid == 0:  # a process of the uid that outlives "its run"
            try:
                os.setgid(uid)
                os.setuid(uid)
                time.sleep(30)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{pid}").st_uid != uid and time.monotonic() < deadline:
            time.sleep(0.01)
        assert reward_code._kill_every_process_of(uid) is True  # it is killed...
        os.waitpid(pid, 0)
        assert reward_code._processes_of(uid) == []  # ...and gone before the uid may be reused
    finally:
        reward_code._give_back_uid(uid)
    assert uid not in reward_code._uids_in_use and uid not in reward_code._uids_quarantined  # free again
