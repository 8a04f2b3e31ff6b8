"""The code reward: run the model's Python program against the problem's tests, in a sandbox.

    python reward_code.py --status                    # which isolation layers work on this machine

The reward for a code problem is 1.0 when the program extracted from the response passes every test,
else 0.0 (with partial_credit=True: the fraction of tests passed). Training runs programs written by a
policy that is being optimized to get reward, so the grader must assume that any program may try to
cheat or to do damage, and that it will eventually find whatever the grader lets it get away with.

Extraction
  - The program is the content of the LAST fenced block marked ```python, ```python3, ```py or bare
    ```. Blocks marked as another language (```cpp, ```text) are skipped. A block whose closing fence
    is missing (a response cut off at the length limit) does not count. No block: reward 0, pred None.

Test specs (JSON-serializable dicts; data/problems.py builds them from the datasets)
  {"kind": "assert", "setup": str, "asserts": [str, ...]}              MBPP
      Run the program, then `setup`, then each assert. Each assert is one test.
  {"kind": "function_check", "prefix": str, "check": str, "entry_point": str}   HumanEval
      Run `prefix` (the prompt: signature and docstring) followed by the program, then `check` (the
      test code, which defines check(candidate)), then check(entry_point). One test. The prompt is
      prepended even when the program defines entry_point itself (it then simply redefines it), because
      some HumanEval tests call helpers that only the prompt defines (HumanEval/38's encode_cyclic).
  {"kind": "stdio", "cases": [{"input": str, "output": str}, ...], "time_limit_s": float (optional)}
      Run the program once per case with `input` on stdin. The case passes when the program exits
      with status 0 and its stdout equals `output` after the usual competitive-programming whitespace
      rule: trailing whitespace of every line and trailing blank lines are ignored ("\\r\\n" is "\\n");
      everything else (leading spaces, blank lines inside, the numbers' spelling) must match.
A failed test stops the run early unless partial_credit is on (the reward is 0 anyway).

How one program runs (as root on Linux, the normal case in a container; each layer is tested in
tests/test_code_reward.py)
  1. A fresh temporary directory holds only solution.py (the program). Expected outputs and asserts are
     never written to disk: stdio outputs stay in this (the grader's) process, and the asserts reach the
     harness through its stdin.
  2. The command is `unshare -n -p -f --kill-child -m --mount-proc python -I -c HARNESS`, started in its
     own session (so its own process group): a new network namespace (only a loopback device, which is
     down: no network at all), a new PID namespace (the program sees only its own processes, cannot
     signal anything outside, and when its first process dies the kernel kills every process it
     started, even ones that left the process group), and a private /proc. The environment is not
     inherited (no API keys): PATH, HOME=TMPDIR=the sandbox directory, LANG, one BLAS thread.
  3. The harness (HARNESS below, our code) sets the resource limits: CPU seconds, address space
     (memory), file size, open files, processes, no core files; then drops from root to an
     unprivileged uid of its own (SANDBOX_UID_BASE + a slot number, one uid per program running at the
     same time, so that RLIMIT_NPROC, which counts all processes of a uid, is not shared between
     programs). As that uid the program can write only its sandbox directory and world-writable places
     (/tmp, /dev/shm), cannot touch the grader's files, and cannot signal or inspect (ptrace) the grader.
  4. Only then does it run the program: for stdio, as __main__ with the case on stdin; for asserts, the
     program (with __name__ "__solution__", so an `if __name__ == "__main__":` block does not run),
     after which it only answers the grader's requests (stdin stays empty for the program).
  5. This process reads stdout and stderr with a cap (output_bytes; the whole process group is killed
     on overflow), enforces the wall-clock limit (killpg SIGKILL), and always kills the process group
     at the end; then it removes the directory.

How a verdict is decided (assert and function_check specs)
  - The grader decides, in its own interpreter. Each test's code (an MBPP assert, test_setup_code,
    HumanEval's check(candidate)) runs HERE, with the program's functions replaced by proxies: a proxy
    sends (function name, arguments) on a request pipe, the harness calls the function and writes back
    the return value, and the proxy returns the decoded value. So `assert f(x) == [1, 2]`,
    math.isclose, set(...) ==, `is True`, HumanEval's tolerances and find_zero's property checks work
    unchanged, and every comparison sees only values this interpreter built.
  - Values cross the boundary only through a strict codec (CODEC below): exact built-in types checked
    with `type(x) is` (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset;
    Counter/OrderedDict/defaultdict arrive as the plain dict), a depth cap, a size cap. Anything else
    (a subclass of int or str, an object with its own __eq__, a generator) fails the test. An answer is
    framed with a length, this run's random token and the request's number; a mangled, nested or
    out-of-order answer ends the run (no exception reaches the caller). A forged answer can only ever
    be a value, compared with expectations that never enter the sandbox.
  - Deadlines are measured here: each test gets timeout_s from when it starts; an answer that is late
    kills the run (its remaining tests fail; with partial credit the earlier verdicts stand). Ignoring
    SIGALRM or catching exceptions in the program cannot extend a test.
  - Still in the program's interpreter (counted per response as in_process_tests): the tests that the
    spec's reference solution ("reference"; data/problems.py carries MBPP's code and HumanEval's
    canonical_solution) fails when decided here, found by one reference run per spec, cached (tests that
    check a mutated argument, take a type or a class instance, use sys.getsizeof); and, for specs
    without a reference, tests whose own arguments are not plain values (a lambda). Those run as before:
    the program's in-process hacks (rigged __eq__, settrace, patched builtins) can reach them. On the
    reference solutions that is 0 of 164 HumanEval tests and 15 of 2922 MBPP tests.
  - A program's function may take a builtin's name in the test (MBPP 126 defines `sum`) only where the
    reference (or the entry point) defines that name: else `sorted`/`len` in the test stay Python's.
  - The dataset's test code is trusted (like the expected values): it runs in the grader's process.

What is NOT isolated (know these before training on untrusted programs)
  - The in-process tests above (in_process_tests) run in the program's interpreter: there a program
    that inspects the harness can forge their verdicts.
  - Files readable by everyone stay readable (the sandbox uid can read world-readable files, say a
    dataset with the reference solutions): keep such files in a directory that is not world-readable.
    World-writable directories (/tmp, /dev/shm) are writable by the sandbox uid and files left there
    are not cleaned up (RLIMIT_FSIZE caps each file's size, not their number).
  - CPU and memory are limited per process, not per sandbox: max_processes processes may each use
    memory_mb; the wall-clock limit bounds how long any of it lasts.
  - Python's own modules are the interpreter's: a program can import anything installed.
As a normal (non-root) user: no uid can be dropped to. The command becomes `unshare -r -n -p -f ...`
(an unprivileged user namespace) where the kernel allows it: network, PID and /proc isolation stay,
but the program runs with YOUR file permissions (it can delete your files) and RLIMIT_NPROC counts
all your processes (it is set to your current count plus max_processes). The Python guard (python_guard,
on by default: os.kill, os.system, os.fork, subprocess, shutil.rmtree, and removing or renaming files
outside the sandbox directory raise PermissionError) is then the only, weak (ctypes bypasses it),
defence of your files. Without user namespaces (or without the unshare command) nothing isolates the
network or the processes: a warning says so once on stderr and sandbox_status() reports it. Run as
root in a container (or in a VM) for real isolation.

The grader's parallelism is a thread pool (num_workers, default os.cpu_count()): each thread launches
child processes and waits for them, so the work happens in the children.
"""

import argparse
import ast
import builtins
import functools
import hashlib
import importlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

#### Limits and settings (every one is a keyword argument of grade_code_batch)

DEFAULT_TIMEOUT_S = 5.0  # wall-clock seconds per test (one stdio case, or one assert); CPU time likewise
DEFAULT_MEMORY_MB = 1024  # RLIMIT_AS: address space of each process
DEFAULT_OUTPUT_BYTES = 1 << 20  # stdout and stderr together; more kills the program
DEFAULT_MAX_OPEN_FILES = 64  # RLIMIT_NOFILE
DEFAULT_MAX_PROCESSES = 32  # RLIMIT_NPROC (processes and threads of the sandbox uid)
DEFAULT_MAX_FILE_BYTES = 16 << 20  # RLIMIT_FSIZE: the largest file the program may write
STARTUP_ALLOWANCE_S = 2.0  # wall-clock time for unshare and the interpreter to start, on a loaded machine
SANDBOX_UID_BASE = 2_000_000_000  # as root, programs run as uid BASE + slot: uids no account uses

TEST_KINDS = ("assert", "function_check", "stdio")


#### Extracting the program from the response

_PYTHON_FENCE_LANGUAGES = ("", "python", "python3", "py")


def extract_code(response):
    """The content of the last complete ```python (```py, ```python3 or bare ```) block, or None.

    Fences are read line by line: a line starting with ``` opens a block (the word after it is the
    language), and the next line that is just ``` closes it. Blocks of other languages are skipped.
    """
    last, language, lines = None, None, None
    for line in response.splitlines():
        stripped = line.strip()
        if lines is None:
            if stripped.startswith("```"):
                language, lines = stripped[3:].strip().lower(), []
        elif stripped == "```":
            if language in _PYTHON_FENCE_LANGUAGES:
                last = "\n".join(lines) + "\n"
            lines = None
        else:
            lines.append(line)
    return last


#### Plain values across the sandbox's boundary
#
# A program's return value reaches the grader only as JSON data in this encoding, and the grader accepts
# only these exact built-in types (checked with `type(x) is`, so no subclass of int or str, no object with
# its own __eq__, no generator), nested at most a fixed depth. The same source runs on both sides: the
# harness encodes return values and decodes arguments, the grader encodes arguments and decodes returns.

VALUE_DEPTH = 64  # the deepest return value the grader accepts
ARGUMENT_DEPTH = 128  # arguments may be deeper, so that a returned value passed on to another call still fits
ANSWER_BYTES = 8 << 20  # the largest answer message the grader reads

CODEC = r'''
import collections


def encode_value(value, depth):
    """JSON data for a plain built-in value (TypeError or ValueError for anything else). The dicts of
    collections (Counter, OrderedDict, defaultdict) are sent as the plain dict they compare equal to."""
    if depth < 0:
        raise ValueError("nested too deeply")
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:  # big ints in hex: JSON digits are capped (sys.get_int_max_str_digits), hex is not
        return value if -(1 << 53) < value < (1 << 53) else {"i": hex(value)}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is dict or kind in (collections.Counter, collections.OrderedDict, collections.defaultdict):
        return {"d": [[encode_value(key, depth - 1), encode_value(item, depth - 1)] for key, item in value.items()]}
    for tag, container in (("l", list), ("t", tuple), ("s", set), ("f", frozenset)):
        if kind is container:
            return {tag: [encode_value(item, depth - 1) for item in value]}
    raise TypeError("not a plain built-in value")


def decode_value(data, depth):
    """The value that encode_value encoded; ValueError (or TypeError) for anything else."""
    if depth < 0:
        raise ValueError("nested too deeply")
    kind = type(data)
    if data is None or kind is bool or kind is int or kind is float or kind is str:
        return data
    if kind is dict and len(data) == 1:
        [(tag, inner)] = data.items()
        if tag == "i" and type(inner) is str:
            return int(inner, 16)
        if tag == "b" and type(inner) is str:
            return bytes.fromhex(inner)
        if tag == "c" and type(inner) is list and len(inner) == 2 and all(type(p) in (int, float) for p in inner):
            return complex(inner[0], inner[1])
        if tag == "d" and type(inner) is list and all(type(pair) is list and len(pair) == 2 for pair in inner):
            return {decode_value(key, depth - 1): decode_value(item, depth - 1) for key, item in inner}
        containers = {"l": list, "t": tuple, "s": set, "f": frozenset}
        if tag in containers and type(inner) is list:
            return containers[tag](decode_value(item, depth - 1) for item in inner)
    raise ValueError("not an encoded plain value")
'''
exec(CODEC)  # defines encode_value and decode_value here, in the grader, from the source the harness runs


#### The harness: our code, the first thing that runs inside the sandbox
#
# `python -I -c HARNESS CONFIG_JSON`. CONFIG_JSON holds the limits, the uid to drop to and the mode,
# never test data. In assert mode the tests come on stdin (read to the end before the program runs,
# so the program finds stdin empty) and the result goes to the pipe `result_fd`.

HARNESS = r'''
import json, os, resource, signal, sys
config = json.loads(sys.argv[1])
for name, value in config["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if config["uid"] is not None:
    os.setgroups([])
    os.setgid(config["uid"])
    os.setuid(config["uid"])
with open("solution.py") as file:
    program = file.read()

if config["guard"]:
    import builtins, shutil, subprocess
    def refuse(*args, **kwargs):
        raise PermissionError("not allowed in the sandbox")
    def inside_sandbox(path):
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(os.getcwd() + os.sep)
        except (TypeError, ValueError):
            return isinstance(path, int)  # a file descriptor
    def only_inside(function):
        def guarded(*paths, **kwargs):
            if all(inside_sandbox(p) for p in paths if isinstance(p, (str, bytes, os.PathLike, int))):
                return function(*paths, **kwargs)
            raise PermissionError("not allowed outside the sandbox directory")
        return guarded
    for name in ("kill", "killpg", "system", "popen", "fork", "forkpty", "execv", "execve", "execl", "execle",
                 "execlp", "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle",
                 "posix_spawn", "posix_spawnp", "setuid", "setgid", "setreuid", "chroot", "putenv", "fchdir"):
        if hasattr(os, name):
            setattr(os, name, refuse)
    for name in ("remove", "unlink", "rmdir", "removedirs", "rename", "renames", "replace", "truncate",
                 "chmod", "chown", "lchown", "link", "symlink"):
        setattr(os, name, only_inside(getattr(os, name)))
    shutil.rmtree = shutil.move = shutil.chown = refuse
    subprocess.Popen = refuse

if config["mode"] == "stdio":
    sys.argv = ["solution.py"]
    exec(compile(program, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    sys.exit(0)

# Assert mode: a conversation. The grader sends requests on request_fd and reads one answer per request
# on result_fd, each a JSON message framed as b"<length>\n<bytes>". The tests themselves stay in the
# grader: this side only runs the program, calls its functions and sends back plain values.
''' + CODEC + r'''
def read_message():
    header = b""
    while not header.endswith(b"\n"):
        byte = os.read(config["request_fd"], 1)
        if not byte:
            return None
        header += byte
    size, data = int(header), b""
    while len(data) < size:
        chunk = os.read(config["request_fd"], size - len(data))
        if not chunk:
            return None
        data += chunk
    return json.loads(data)
def send(message):
    message.update(token=start["token"], seq=request["seq"])
    data = json.dumps(message).encode()
    data = b"%d\n" % len(data) + data
    while data:
        data = data[os.write(config["result_fd"], data):]
def run(code, name):
    try:
        exec(compile(code, name, "exec"), namespace)
        return True
    except BaseException:  # SystemExit too: exiting is not passing
        return False
def name_of_error(error):
    try:
        return str(type(error).__name__)
    except BaseException:
        return "Exception"
request = start = read_message()
namespace = {"__name__": "__solution__", "__builtins__": __builtins__}
loaded = run(program, "solution.py")  # a program that fails to run (or exits) passes nothing
callables = []
for name in start["names"]:
    try:
        if callable(namespace[name]):
            callables.append(name)
    except BaseException:
        pass
send({"loaded": loaded, "callables": callables})
while True:
    request = read_message()
    if request is None:
        break
    if request["op"] == "exec":  # a test that must run in the program's interpreter (see the docstring)
        send({"passed": run(request["code"], "test.py")})
        continue
    try:
        function = namespace[request["name"]]
        value = function(*decode_value(request["args"], config["argument_depth"]),
                         **decode_value(request["kwargs"], config["argument_depth"]))
    except BaseException as error:
        send({"raised": name_of_error(error)})
        continue
    try:
        encoded = encode_value(value, config["value_depth"])
    except BaseException:  # not a plain built-in value: the grader counts the test as failed
        send({"unserializable": True})
        continue
    send({"value": encoded})
for stream in (sys.stdout, sys.stderr):  # os._exit below does not flush what the program printed
    try:
        stream.flush()
    except BaseException:
        pass
os._exit(0)  # no atexit handlers, no waiting for the program's threads
'''


#### Setting up: which isolation layers work here (probed once)

_setup = None
_setup_lock = threading.Lock()
_uids_in_use = set()
_uid_lock = threading.Lock()


def _namespace_flags(as_root):
    """unshare options, strongest first: network + PID + private /proc, then network only."""
    user = [] if as_root else ["-r"]  # a normal user needs a user namespace to create the others
    return [user + ["-n", "-p", "-f", "--kill-child", "-m", "--mount-proc"], user + ["-n"]]


_PROBE_PROGRAM = '''
import fractions, os, socket  # fractions: a module the harness has not imported, read as the sandbox uid
interfaces = sorted(name for _, name in socket.if_nameindex())
uid = os.getuid()
'''


def _probe(python, unshare_prefix, uid):
    """Run a tiny program through the full sandbox; its uid and network interfaces, or None if it fails."""
    result = _run_sandboxed(program=_PROBE_PROGRAM, mode="assert",
                            tests={"setup": "", "asserts": ["print(json.dumps([uid, interfaces]))"]},
                            python=python, unshare_prefix=unshare_prefix, uid=uid, timeout_s=10.0,
                            memory_mb=DEFAULT_MEMORY_MB, output_bytes=4096, max_open_files=DEFAULT_MAX_OPEN_FILES,
                            max_processes=DEFAULT_MAX_PROCESSES, max_file_bytes=DEFAULT_MAX_FILE_BYTES,
                            python_guard=False, stop_at_first_failure=True, setup_line="import json\n")
    if result["passed"] != [True]:
        return None
    return json.loads(result["stdout"].strip().splitlines()[-1])


def _python_candidates():
    """The interpreter for programs: ours, else the system's (when ours is not readable by other uids)."""
    candidates = [sys.executable]
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(path) and os.path.realpath(path) != os.path.realpath(sys.executable):
            candidates.append(path)
    return candidates


def sandbox_setup():
    """How programs run here, decided once: {"python", "unshare_prefix", "drop_uid", "status"}."""
    global _setup
    with _setup_lock:
        if _setup is not None:
            return _setup
        as_root = os.geteuid() == 0
        unshare = shutil.which("unshare")
        notes, chosen = [], None
        candidates = [[unshare] + flags for flags in _namespace_flags(as_root)] if unshare else []
        for prefix in candidates + [[]]:
            for python in _python_candidates():
                found = _probe(python, prefix, SANDBOX_UID_BASE if as_root else None)
                if found is not None:
                    chosen = (prefix, python, as_root, found)
                    break
            if chosen:
                break
        if chosen is None and as_root:  # the uid cannot read any interpreter: run as root, say so
            for prefix in candidates + [[]]:
                found = _probe(sys.executable, prefix, None)
                if found is not None:
                    chosen = (prefix, sys.executable, False, found)
                    notes.append("NOT dropping root: no interpreter is readable by an unprivileged uid")
                    break
        if chosen is None:
            raise RuntimeError("reward_code: cannot run a Python program at all (not even without a sandbox)")
        prefix, python, drop_uid, (uid, interfaces) = chosen
        flags = " ".join(prefix[1:])
        if prefix and interfaces == ["lo"]:
            network = f"isolated (unshare {flags})"
        else:
            network = "NOT isolated (" + ("unshare is not installed" if not unshare else
                                           "the kernel refuses new namespaces here") + ")"
            notes.append("programs can reach the network")
        pids = ("own PID namespace and /proc" if "-p" in prefix else
                "NOT isolated (programs can see and signal this user's processes)")
        user = (f"programs run as uid {SANDBOX_UID_BASE}+slot (root drops privileges)" if drop_uid else
                f"programs run as this user (uid {os.geteuid()}): they can touch this user's files")
        interpreter = "" if python == sys.executable else f"; programs run with {python} (sys.executable " \
                                                          "is not readable by the sandbox uid)"
        status = (f"network: {network}; processes: {pids}; user: {user}; limits: wall and CPU time, "
                  f"memory (RLIMIT_AS), output, file size, open files, processes{interpreter}")
        if notes:
            print(f"reward_code: WARNING: weak sandbox: {'; '.join(notes)}. {status}", file=sys.stderr)
        _setup = {"python": python, "unshare_prefix": prefix, "drop_uid": drop_uid, "status": status}
        return _setup


def sandbox_status():
    """One line: which isolation layers are active on this machine."""
    return sandbox_setup()["status"]


def _take_uid():
    with _uid_lock:
        slot = 0
        while SANDBOX_UID_BASE + slot in _uids_in_use:
            slot += 1
        _uids_in_use.add(SANDBOX_UID_BASE + slot)
        return SANDBOX_UID_BASE + slot


def _give_back_uid(uid):
    with _uid_lock:
        _uids_in_use.discard(uid)


def _processes_of_this_user():
    """Threads of this uid (RLIMIT_NPROC counts threads): a normal user's limit must leave room for them."""
    count, uid = 0, str(os.getuid())
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/status") as file:
                fields = dict(line.split(":", 1) for line in file if ":" in line)
            if fields.get("Uid", "").split()[0] == uid:
                count += int(fields.get("Threads", "1"))
        except (OSError, ValueError, IndexError):
            continue
    return count


def _wait_until_no_process_of(uid, patience_s=5.0):
    """After a SIGKILL the kernel tears the PID namespace down in the background: wait for it."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        alive = False
        for entry in os.listdir("/proc"):
            try:
                alive = entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                continue
            if alive:
                break
        if not alive:
            return
        time.sleep(0.01)


#### Running one program

def _sandbox_environment(directory):
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": directory, "TMPDIR": directory, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _remove_directory(directory):
    def make_writable_and_retry(function, path, _):
        os.chmod(os.path.dirname(path), 0o700)  # a program may have made its files read-only
        function(path)
    shutil.rmtree(directory, onerror=make_writable_and_retry)


def _run_sandboxed(*, program, mode, tests=None, stdin="", python, unshare_prefix, uid, timeout_s, memory_mb,
                   output_bytes, max_open_files, max_processes, max_file_bytes, python_guard,
                   stop_at_first_failure, setup_line="", plan=None):
    """Run one program once. mode "stdio": `stdin` is its input; mode "assert": `tests` is
    {"setup", "asserts"} and `plan` (see _test_plan) says how each test is decided; without a plan every
    test runs in the program's interpreter (the sandbox probe). Returns {"stdout", "stderr", "returncode",
    "passed" (assert mode: a bool per assert), "timed_out", "output_overflow", "seconds", "in_process_tests"}."""
    count = len(tests["asserts"]) if mode == "assert" else 1
    wall_s = STARTUP_ALLOWANCE_S + timeout_s * (count + (2 if mode == "assert" else 0))  # + program, setup
    if mode == "assert" and plan is None:
        plan = {"setup": setup_line + tests["setup"], "asserts": list(tests["asserts"]), "names": [],
                "in_process": set(range(count)), "may_fall_back": False}
    directory = tempfile.mkdtemp(prefix="zerorl-sandbox-")
    token = secrets.token_hex(16)
    result_read, result_write = os.pipe()
    request_read, request_write = os.pipe() if mode == "assert" else (None, None)
    process, timed_out, overflow = None, False, False
    verdict = {"passed": [False] * count, "in_process_tests": 0}
    try:
        with open(os.path.join(directory, "solution.py"), "w") as file:
            file.write(program)
        if uid is not None:
            os.chown(directory, uid, uid)
            os.chown(os.path.join(directory, "solution.py"), uid, uid)
        os.chmod(directory, 0o700)
        processes_limit = max_processes if uid is not None or os.geteuid() == 0 else \
            _processes_of_this_user() + max_processes
        config = {"mode": mode, "uid": uid, "guard": python_guard, "timeout_s": timeout_s, "result_fd": result_write,
                  "request_fd": request_read, "value_depth": VALUE_DEPTH, "argument_depth": ARGUMENT_DEPTH,
                  "rlimits": {"RLIMIT_CPU": math.ceil(wall_s), "RLIMIT_AS": memory_mb << 20,
                              "RLIMIT_FSIZE": max_file_bytes, "RLIMIT_NOFILE": max_open_files,
                              "RLIMIT_NPROC": processes_limit, "RLIMIT_CORE": 0}}
        command = list(unshare_prefix) + [python, "-I", "-c", HARNESS, json.dumps(config)]
        start = time.monotonic()
        process = subprocess.Popen(command, cwd=directory, env=_sandbox_environment(directory),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   pass_fds=(result_write,) + ((request_read,) if mode == "assert" else ()),
                                   start_new_session=True)
        os.close(result_write)
        result_write = None
        if mode == "stdio":
            outputs, overflow, timed_out = _communicate(process, stdin.encode(), result_read, start + wall_s,
                                                        output_bytes)
        else:
            os.close(request_read)
            request_read = None
            process.stdin.close()  # the program finds stdin empty; requests come on their own pipe
            channel = _open_channel(process, request_write, result_read, token, output_bytes, start + wall_s)
            verdict = _decide_tests(channel, plan, timeout_s=timeout_s, stop_at_first_failure=stop_at_first_failure)
            outputs, overflow, timed_out = _close_channel(channel)
            request_write = None
    finally:
        if process is not None:
            try:  # always: whatever the program left running in its process group dies with it
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            if uid is not None and (timed_out or overflow):
                _wait_until_no_process_of(uid)  # killed: the next program of this uid starts from zero
        for fd in (result_read, result_write, request_read, request_write):
            if fd is not None:
                os.close(fd)
        _remove_directory(directory)
    seconds = time.monotonic() - start
    return {"stdout": outputs["stdout"].decode("utf-8", errors="replace"),
            "stderr": outputs["stderr"].decode("utf-8", errors="replace"), "returncode": process.returncode,
            "passed": verdict["passed"], "timed_out": timed_out, "output_overflow": overflow, "seconds": seconds,
            "in_process_tests": verdict["in_process_tests"]}


def _communicate(process, stdin_bytes, result_read, deadline, output_bytes):
    """Feed stdin and collect stdout, stderr and the result pipe until all close, the deadline passes or
    the output passes output_bytes. Returns ({"stdout", "stderr", "result": bytes}, overflow, timed_out)."""
    selector = selectors.DefaultSelector()
    names = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr", result_read: "result"}
    outputs = {name: bytearray() for name in names.values()}
    for fd in names:
        selector.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin_bytes)
    stdin_fd = process.stdin.fileno()
    os.set_blocking(stdin_fd, False)
    if pending:
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        process.stdin.close()
    overflow = timed_out = False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                if key.fd == stdin_fd:
                    try:
                        pending = pending[os.write(stdin_fd, pending[:65536]):]
                    except (BrokenPipeError, OSError):  # the program stopped reading: fine
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(stdin_fd)
                        process.stdin.close()
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                outputs[names[key.fd]] += chunk
                if len(outputs["stdout"]) + len(outputs["stderr"]) > output_bytes or len(outputs["result"]) > 1 << 20:
                    overflow = True
            if overflow:
                break
    finally:
        selector.close()
        if not process.stdin.closed:
            process.stdin.close()
    return {name: bytes(value) for name, value in outputs.items()}, overflow, timed_out


#### The conversation with a running program (assert mode)
#
# One request at a time: the grader writes a request, then reads stdout, stderr and the answer pipe
# until the answer with this run's token and this request's number has come, the request's deadline
# passes, the output passes its cap, or the program closes the pipe. Every one of those but the answer
# ends the run (_RunOver): the program is killed and its remaining tests fail.

class _RunOver(Exception):
    """The sandboxed run ended before answering: "timeout", "overflow", "malformed" or "ended"."""


def _open_channel(process, request_write, result_read, token, output_bytes, wall_deadline):
    os.set_blocking(request_write, False)
    selector = selectors.DefaultSelector()
    readers = {process.stdout.fileno(): "stdout", process.stderr.fileno(): "stderr", result_read: "result"}
    for fd in readers:
        selector.register(fd, selectors.EVENT_READ)
    return {"selector": selector, "readers": readers, "outputs": {name: bytearray() for name in readers.values()},
            "request_fd": request_write, "result_fd": result_read, "token": token, "seq": 0, "output_bytes": output_bytes,
            "wall_deadline": wall_deadline, "over": None}


def _end_run(channel, reason):
    channel["over"] = reason
    raise _RunOver(reason)


def _take_answer(channel):
    """The next complete answer message from the answer pipe's bytes, or None if it has not all come."""
    buffer = channel["outputs"]["result"]
    newline = buffer.find(b"\n", 0, 24)
    if newline < 0:
        if len(buffer) >= 24:
            _end_run(channel, "malformed")
        return None
    header = bytes(buffer[:newline])
    if not header.isdigit() or int(header) > ANSWER_BYTES:
        _end_run(channel, "malformed")
    end = newline + 1 + int(header)
    if len(buffer) < end:
        return None
    data = bytes(buffer[newline + 1:end])
    del buffer[:end]
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError, MemoryError):  # a nested or mangled message fails the run, no more
        _end_run(channel, "malformed")
    if type(answer) is not dict or answer.get("token") != channel["token"] or answer.get("seq") != channel["seq"]:
        _end_run(channel, "malformed")
    return answer


def _ask(channel, request, seconds):
    """Send one request and return its answer (a dict), waiting at most `seconds` (measured here, in the
    grader) and never past the run's wall-clock deadline. Raises _RunOver when no answer comes."""
    if channel["over"]:
        raise _RunOver(channel["over"])
    deadline = min(time.monotonic() + seconds, channel["wall_deadline"])
    channel["seq"] += 1
    data = json.dumps(dict(request, seq=channel["seq"])).encode()
    pending = memoryview(b"%d\n" % len(data) + data)
    selector, request_fd, outputs = channel["selector"], channel["request_fd"], channel["outputs"]
    selector.register(request_fd, selectors.EVENT_WRITE)
    try:
        while True:
            if not pending:
                answer = _take_answer(channel)
                if answer is not None:
                    return answer
                if channel["result_fd"] not in selector.get_map():
                    _end_run(channel, "ended")  # the answer pipe closed without an answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _end_run(channel, "timeout")
            for key, _ in selector.select(remaining):
                if key.fd == request_fd:
                    try:
                        pending = pending[os.write(request_fd, pending[:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the harness is gone
                        _end_run(channel, "ended")
                    if not pending:
                        selector.unregister(request_fd)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                outputs[channel["readers"][key.fd]] += chunk
                if len(outputs["stdout"]) + len(outputs["stderr"]) > channel["output_bytes"]:
                    _end_run(channel, "overflow")
                if len(outputs["result"]) > ANSWER_BYTES + 24:
                    _end_run(channel, "malformed")
    finally:
        if request_fd in selector.get_map():
            selector.unregister(request_fd)


def _close_channel(channel):
    """Tell the harness there is nothing more (it exits), collect what is left of its output; returns
    (outputs, overflow, timed_out) as _communicate does. A run that ended early is not waited for."""
    os.close(channel["request_fd"])
    selector, outputs = channel["selector"], channel["outputs"]
    deadline = min(channel["wall_deadline"], time.monotonic() + STARTUP_ALLOWANCE_S)
    try:
        while channel["over"] is None and any(channel["readers"][key.fd] != "result"
                                              for key in selector.get_map().values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break  # the verdicts are in; whatever still runs is killed by the caller
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                elif channel["readers"][key.fd] != "result":
                    outputs[channel["readers"][key.fd]] += chunk
                    if len(outputs["stdout"]) + len(outputs["stderr"]) > channel["output_bytes"]:
                        channel["over"] = "overflow"
    finally:
        selector.close()
    return ({name: bytes(value) for name, value in outputs.items()}, channel["over"] == "overflow",
            channel["over"] == "timeout")


#### Deciding the verdicts, in the grader's interpreter
#
# Each test's code (an MBPP assert, the setup, HumanEval's check) runs HERE, with the program's
# functions replaced by proxies: a proxy sends the call to the sandbox and returns the decoded plain
# value. So `f(x) == [1, 2]`, math.isclose, set(...), `is True` and check(candidate) compare only values
# this interpreter built. The test code is the dataset's (trusted, like the expected values); the
# program never sees it. A test the plan marks in_process runs in the program's interpreter as before.

# Modules the tests may use without the program importing them. (Deviation: in the program's
# interpreter an assert that uses math without the program's `import math` fails with NameError.)
_TEST_MODULES = ("math", "cmath", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
                 "operator", "random", "statistics", "decimal", "fractions")


class _ProxyStop(BaseException):
    """Ends a test whose proxied call cannot give a value; the test is failed whatever its code catches."""


class ProgramRaised(Exception):
    """The program's function raised an exception that is not one of Python's built-in Exceptions."""


def _exception_from(name):
    """The built-in exception a program's function raised (by name), to raise in the test's code."""
    error_type = getattr(builtins, name, None) if type(name) is str else None
    if isinstance(error_type, type) and issubclass(error_type, Exception):
        try:
            return error_type("raised by the program")
        except Exception:
            pass
    return ProgramRaised(str(name)[:100])


def _proxy(name, channel, test):
    """A stand-in for the program's function `name`: the call runs in the sandbox, within the test's deadline."""
    def call(*args, **kwargs):
        if test["spoiled"]:
            raise _ProxyStop()
        try:
            request = {"op": "call", "name": name, "args": encode_value(list(args), ARGUMENT_DEPTH),
                       "kwargs": encode_value(kwargs, ARGUMENT_DEPTH)}
        except (TypeError, ValueError, RecursionError):  # a lambda, a class instance: not a plain value
            test["spoiled"] = test["cannot_proxy"] = True
            raise _ProxyStop()
        try:
            answer = _ask(channel, request, test["deadline"] - time.monotonic())
        except _RunOver:
            test["spoiled"] = True
            raise _ProxyStop()
        if "value" in answer:
            try:
                return decode_value(answer["value"], VALUE_DEPTH)
            except (TypeError, ValueError, RecursionError, MemoryError, OverflowError):
                pass
        elif "raised" in answer:
            raise _exception_from(answer["raised"])
        test["spoiled"] = True  # an unserializable or malformed value: the test fails
        raise _ProxyStop()
    call.__name__ = call.__qualname__ = name
    return call


def _decide_tests(channel, plan, *, timeout_s, stop_at_first_failure):
    """Run the program (the harness answers "loaded"), then decide each test of `plan`.
    Returns {"passed": [bool per test], "in_process_tests": how many ran in the program's interpreter}."""
    asserts = plan["asserts"]
    passed, in_process_tests = [False] * len(asserts), 0
    try:
        loaded = _ask(channel, {"op": "start", "token": channel["token"], "names": plan["names"]},
                      STARTUP_ALLOWANCE_S + timeout_s)
    except _RunOver:
        return {"passed": passed, "in_process_tests": 0}
    if loaded.get("loaded") is not True:
        return {"passed": passed, "in_process_tests": 0}
    callables = loaded.get("callables")
    callables = [name for name in plan["names"] if type(callables) is list and name in callables]
    test = {"deadline": 0.0, "spoiled": False, "cannot_proxy": False}
    namespace = {"__name__": "__test__", "__builtins__": builtins}
    for name in plan["names"]:
        if name in _TEST_MODULES:
            namespace[name] = importlib.import_module(name)
    for name in callables:
        namespace[name] = _proxy(name, channel, test)
    setups = {}  # "grader", "sandbox": did the setup code pass there (run once, before the first test there)

    def in_grader(code, name):
        test.update(deadline=time.monotonic() + timeout_s, spoiled=False, cannot_proxy=False)
        try:
            exec(compile(code, name, "exec"), namespace)
            ok = True
        except (Exception, _ProxyStop):
            ok = False
        if channel["over"]:
            raise _RunOver(channel["over"])
        return ok and not test["spoiled"]

    def in_sandbox(code):
        if "sandbox" not in setups:
            setups["sandbox"] = _ask(channel, {"op": "exec", "code": plan["setup"]}, timeout_s).get("passed") is True
        return _ask(channel, {"op": "exec", "code": code}, timeout_s).get("passed") is True and setups["sandbox"]

    for index, code in enumerate(asserts):
        if stop_at_first_failure and not all(passed[:index]):
            break
        try:
            if index in plan["in_process"]:
                in_process_tests += 1
                passed[index] = in_sandbox(code)
                continue
            if "grader" not in setups:
                setups["grader"] = in_grader(plan["setup"], "setup.py")
            passed[index] = in_grader(code, "test.py") and setups["grader"]
            if test["cannot_proxy"] and plan["may_fall_back"]:  # the TEST's arguments are not plain values
                in_process_tests += 1
                passed[index] = in_sandbox(code)
        except _RunOver:
            break  # killed (late, too much output, a mangled answer): this and the remaining tests fail
    return {"passed": passed, "in_process_tests": in_process_tests}


#### Which tests can be decided in the grader: a reference run, once per spec

_plans, _plan_locks, _plans_lock = {}, {}, threading.Lock()


def _names_in(codes):
    """Every name the code reads or writes (the test code is the dataset's, so it parses)."""
    names = set()
    for code in codes:
        try:
            names |= {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}
        except (SyntaxError, ValueError):
            continue
    return names


def _static_plan(tests):
    """The plan of a spec before any reference run: every test decided in the grader."""
    if tests["kind"] == "assert":
        prefix, setup, asserts = "", tests.get("setup") or "", list(tests["asserts"])
        may_shadow = set()
    else:
        prefix, setup, asserts = tests["prefix"] + "\n", tests["check"], [f"check({tests['entry_point']})"]
        may_shadow = {tests["entry_point"]}
    reference = tests.get("reference")
    if reference:  # a builtin's name is the program's only where the reference defines it too (MBPP 126's sum)
        may_shadow |= _names_in([prefix + reference])
    # A program's function may take a test's name only where the program is meant to define it: else a
    # program defining `sorted` or `len` would change what the test code computes.
    names = sorted(name for name in _names_in([setup] + asserts)
                   if not hasattr(builtins, name) or name in may_shadow)
    return {"prefix": prefix, "setup": setup, "asserts": asserts, "names": names, "in_process": set(),
            "may_fall_back": not reference, "reference": reference}


def _test_plan(tests, run):
    """How each test of an assert or function_check spec is decided (cached per spec). With a reference
    solution, the reference is run once with every test decided in the grader: the tests it fails there
    (it mutates an argument, returns its own class, a test checks identity) run in the program's
    interpreter for every program. Without one, only tests whose own arguments are not plain values do."""
    key = hashlib.sha256(json.dumps(tests, sort_keys=True).encode()).hexdigest()
    with _plans_lock:
        if key in _plans:
            return _plans[key]
        lock = _plan_locks.setdefault(key, threading.Lock())
    with lock:  # the samples of one prompt, graded at once, wait for a single reference run
        with _plans_lock:
            if key in _plans:
                return _plans[key]
        plan = _static_plan(tests)
        if plan["reference"]:
            result = run(program=plan["prefix"] + plan["reference"], mode="assert",
                         tests={"setup": plan["setup"], "asserts": plan["asserts"]}, plan=plan,
                         stop_at_first_failure=False)
            plan["in_process"] = {index for index, ok in enumerate(result["passed"]) if not ok}
            if plan["in_process"] and not result["timed_out"]:
                # Tests may share state (an assert that checks what an earlier statement mutated): when the
                # reference does worse with the tests split between both places than with all of them in
                # its own interpreter, all of them run there.
                run_reference = functools.partial(run, program=plan["prefix"] + plan["reference"], mode="assert",
                                                  tests={"setup": plan["setup"], "asserts": plan["asserts"]},
                                                  stop_at_first_failure=False)
                result = run_reference(plan=plan)
                if not all(result["passed"]) and not result["timed_out"]:
                    everything = dict(plan, in_process=set(range(len(plan["asserts"]))))
                    alone = run_reference(plan=everything)
                    if sum(alone["passed"]) > sum(result["passed"]):
                        plan, result = everything, alone
            if result["timed_out"]:
                return plan  # a late reference (a loaded machine) decides only this time
        with _plans_lock:
            _plans[key] = plan
    return plan


#### Grading: one response, one batch

def normalize_output(text):
    """The competitive-programming comparison rule: trailing whitespace of each line and trailing blank
    lines do not count ("\\r\\n" is "\\n"). Returns the list of lines to compare."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def count_tests(tests):
    """How many tests a spec holds (the denominator of partial credit)."""
    kind = tests.get("kind")
    if kind == "assert":
        return len(tests["asserts"])
    if kind == "function_check":
        return 1
    if kind == "stdio":
        return len(tests["cases"])
    raise ValueError(f"unknown test kind {kind!r}; choose from {', '.join(TEST_KINDS)}")


def _grade_one(code, tests, *, partial_credit, setup, limits):
    """(passed, total, timed_out, in_process_tests) of one program against its tests."""
    total = count_tests(tests)
    if code is None or total == 0:
        return 0, total, False, 0
    uid = _take_uid() if setup["drop_uid"] else None
    run = functools.partial(_run_sandboxed, python=setup["python"], unshare_prefix=setup["unshare_prefix"],
                            uid=uid, stop_at_first_failure=not partial_credit, **limits)
    try:
        if tests["kind"] in ("assert", "function_check"):
            plan = _test_plan(tests, run)
            # function_check: the prompt, then the model's code (which may redefine the entry point).
            result = run(program=plan["prefix"] + code, mode="assert", plan=plan,
                         tests={"setup": plan["setup"], "asserts": plan["asserts"]})
            return sum(result["passed"]), total, result["timed_out"], result["in_process_tests"]
        if tests.get("time_limit_s"):
            run = functools.partial(run, timeout_s=float(tests["time_limit_s"]))
        passed, timed_out = 0, False
        for case in tests["cases"]:
            result = run(program=code, mode="stdio", stdin=case["input"])
            ok = (result["returncode"] == 0 and not result["timed_out"] and not result["output_overflow"]
                  and normalize_output(result["stdout"]) == normalize_output(case["output"]))
            passed += ok
            timed_out = timed_out or result["timed_out"]
            if not ok and not partial_credit:
                break
        return passed, total, timed_out, 0
    finally:
        if uid is not None:
            _give_back_uid(uid)


def grade_code_batch(responses, tests, *, partial_credit=False, num_workers=None, timeout_s=DEFAULT_TIMEOUT_S,
                     memory_mb=DEFAULT_MEMORY_MB, output_bytes=DEFAULT_OUTPUT_BYTES,
                     max_open_files=DEFAULT_MAX_OPEN_FILES, max_processes=DEFAULT_MAX_PROCESSES,
                     max_file_bytes=DEFAULT_MAX_FILE_BYTES, python_guard=True):
    """Grade one batch of responses against their test specs (tests[i] for responses[i]).

    Returns a dict of lists, one entry per response: pred (the extracted program or None), correct
    (every test passed), reward (1.0 or 0.0; with partial_credit the fraction passed), timeouts (some
    test hit a time limit), passed and total (tests), in_process_tests (how many of its tests ran in the
    program's own interpreter, see the module docstring). The limits are documented at the top of the module.
    """
    if len(responses) != len(tests):
        raise ValueError(f"{len(responses)} responses but {len(tests)} test specs")
    for spec in tests:
        count_tests(spec)  # an unknown kind is an error before anything runs
    setup = sandbox_setup()
    limits = dict(timeout_s=timeout_s, memory_mb=memory_mb, output_bytes=output_bytes,
                  max_open_files=max_open_files, max_processes=max_processes, max_file_bytes=max_file_bytes,
                  python_guard=python_guard)
    predictions = [extract_code(response) for response in responses]
    grade = functools.partial(_grade_one, partial_credit=partial_credit, setup=setup, limits=limits)
    workers = max(1, num_workers or os.cpu_count() or 1)
    if workers == 1 or len(responses) <= 1:
        outcomes = [grade(code, spec) for code, spec in zip(predictions, tests)]
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward-code") as pool:
            outcomes = list(pool.map(grade, predictions, tests))
    passed = [outcome[0] for outcome in outcomes]
    total = [outcome[1] for outcome in outcomes]
    correct = [t > 0 and p == t for p, t in zip(passed, total)]
    if partial_credit:
        rewards = [p / t if t else 0.0 for p, t in zip(passed, total)]
    else:
        rewards = [1.0 if ok else 0.0 for ok in correct]
    return {"pred": predictions, "correct": correct, "reward": rewards,
            "timeouts": [outcome[2] for outcome in outcomes], "passed": passed, "total": total,
            "in_process_tests": [outcome[3] for outcome in outcomes]}


#### Command line: the sandbox's status, or grade a jsonl file of {"response", "tests"} rows

def main(argv=None):
    parser = argparse.ArgumentParser(description="Grade code responses in a sandbox (see the module docstring).")
    parser.add_argument("--status", action="store_true", help="print which isolation layers work here")
    parser.add_argument("--input", help="jsonl with 'response' and 'tests' (a test spec) on each line")
    parser.add_argument("--output", help="jsonl: each input row plus pred, correct, reward, passed, total")
    parser.add_argument("--partial-credit", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="programs at once (default: CPUs)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per test")
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    args = parser.parse_args(argv)
    if args.status or not args.input:
        print(sandbox_status())
        return
    rows = [json.loads(line) for line in open(args.input) if line.strip()]
    start = time.perf_counter()
    graded = grade_code_batch([row["response"] for row in rows], [row["tests"] for row in rows],
                              partial_credit=args.partial_credit, num_workers=args.workers,
                              timeout_s=args.timeout, memory_mb=args.memory_mb)
    seconds = time.perf_counter() - start
    if args.output:
        with open(args.output, "w") as file:
            for index, row in enumerate(rows):
                row.update({key: graded[key][index] for key in graded})
                file.write(json.dumps(row) + "\n")
    print(f"graded {len(rows)} programs: {sum(graded['correct'])} correct, {sum(graded['timeouts'])} with "
          f"timeouts, {len(rows) / max(seconds, 1e-9):.1f} programs/s", file=sys.stderr)


if __name__ == "__main__":
    main()
