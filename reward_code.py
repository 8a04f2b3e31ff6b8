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
tests/test_code_reward.py and tests/test_sandbox.py; `--status` says which are active here)
  1. A fresh temporary directory (root's, mode 0700) holds only solution.py. Expected outputs and asserts
     are never written to disk: stdio outputs stay in this (the grader's) process, and the tests never
     enter the sandbox (see "How a verdict is decided"). A uid is taken from a pool (SANDBOX_UID_BASE + slot), locked with
     flock so that no other grader on the machine uses it at the same time.
  2. Cgroups (v1 memory and pids, where they can be created): one of each per run, with memory_mb for the
     whole program (every process, and the files it writes to its tmpfs) and max_processes processes.
  3. The command is `unshare -n -p -f --kill-child -m --mount-proc python -I -c INIT ...`, started in its
     own session: a new network namespace (only a loopback device, which is down: no network, no
     abstract UNIX sockets of the host), a new PID namespace and a new mount namespace. INIT (our code,
     pid 1 of the namespace, stays root, never runs the program) enters the run's cgroups, then builds a
     private filesystem view: a fresh root on tmpfs with read-only bind mounts of /usr, /lib*, /bin and
     the interpreter's prefixes only, a new /proc, /dev/null, /dev/zero, /dev/(u)random, and size-capped
     fresh tmpfs on /tmp, /dev/shm and the working directory /sandbox (which gets solution.py); then
     chroot. The project, /work, /root, /home, /run, the host's /tmp and its UNIX sockets are not there,
     and whatever the program writes vanishes with the namespace. INIT then forks the harness: resource
     limits (CPU seconds, address space, file size, open files, processes, no core files),
     PR_SET_NO_NEW_PRIVS, drop to the uid, then HARNESS (deliberately in that forked interpreter, not a
     second exec'd one: one interpreter start per run). The environment is not inherited (no API keys).
  4. Only then does the harness run the program: for stdio, as __main__ with the case on stdin; for
     asserts, the program (with __name__ "__solution__", so an `if __name__ == "__main__":` block does
     not run), after which it only answers the grader's requests (stdin stays empty for the program).
  5. When the harness's process exits, INIT exits and the kernel kills every process left in the PID
     namespace, even ones that called setsid(); when the grader kills unshare (the deadline, output
     overflow, or the end of the run), --kill-child kills INIT (its parent-death signal survives because
     INIT never changes its uid) and so the namespace. Then the grader kills whatever the run's cgroups
     still list, removes them, kills every remaining process of the uid and checks that none is left: a
     uid whose processes could not all be killed is never handed out again. Then it removes the directory
     (walking it by file descriptors: deep trees, read-only files, nothing outside it is changed).
  6. Grading one program never raises out of grade_code_batch: any failure (an unreadable record, a
     cleanup that failed, a broken pipe) gives that program reward 0 and sets its sandbox_errors entry;
     the other programs' verdicts are untouched. A warning is printed once per kind of failure.

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
    that inspects the harness can forge their verdicts. Read samples of high-reward responses.
  - Inside the filesystem view everything under /usr, /lib* and the interpreter's prefixes (with
    sys.prefix: the virtual environment) is readable: keep datasets and reference solutions elsewhere.
    Python's own modules are the interpreter's: a program can import anything installed.
  - The kernel is shared: a kernel exploit escapes every layer here (use a VM or gVisor for that).
  - CPU time is limited per process (RLIMIT_CPU) and by the wall-clock limit, not per cgroup.
  - Without cgroups (not root, or no writable cgroup v1 memory/pids hierarchy): memory and processes are
    limited per process only (RLIMIT_AS, RLIMIT_NPROC): max_processes processes may each use memory_mb.
As a normal (non-root) user: no uid can be dropped to and no cgroup made. The command becomes
`unshare -r -n -p -f ...` (an unprivileged user namespace) where the kernel allows it: network, PID
namespace with INIT, and the filesystem view stay, but the program runs with YOUR uid (inside the view it
sees only the read-only system directories, but it keeps capabilities inside its user namespace) and
RLIMIT_NPROC counts all your processes (it is set to your current count plus max_processes). The Python
guard (python_guard, on by default: os.kill, os.system, os.fork, subprocess, shutil.rmtree, and removing or
renaming files outside the sandbox directory raise PermissionError) is a weak extra (ctypes bypasses it).
Without user namespaces (or without the unshare command) nothing isolates the network, the processes or
the filesystem: a warning says so once on stderr and `--status` reports each missing layer. Run as root in
a container (or in a VM) for real isolation.

The grader's parallelism is a thread pool (num_workers, default os.cpu_count()): each thread launches
child processes and waits for them, so the work happens in the children.
"""

import argparse
import ast
import builtins
import fcntl
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
# Run by INIT's forked child after the limits and the uid drop, with sys.argv as `python -I -c HARNESS
# CONFIG_JSON` would set it. CONFIG_JSON holds the mode and the pipes, never test data: in assert mode
# requests come on `request_fd` and answers go to `result_fd`; stdin stays empty for the program.

HARNESS = r'''
import json, os, resource, signal, sys
config = json.loads(sys.argv[1])  # limits and the uid were set by INIT before this code runs
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


#### The trusted init: our code, the first process of the sandbox's PID namespace (pid 1)
#
# `python -I -c INIT INIT_CONFIG HARNESS HARNESS_CONFIG`, as root. It stays root and never runs the
# program: it enters the run's cgroups, builds the private filesystem view, then forks one child that sets
# the rlimits and no_new_privs, drops to the sandbox uid and runs the harness. When that child exits, init
# exits, and the kernel kills every process left in the PID namespace (setsid() does not help them: the
# namespace, not the process group, is what dies). `unshare --kill-child` kills init (and so all of them)
# when unshare is killed; init's parent-death signal stays set because init never changes its uid.

INIT = r"""
import ctypes, json, os, resource, sys
config = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
def mount(source, target, fstype, flags, data):
    if libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                  data.encode() if data else None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error), target)
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC, PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
for group in config["cgroups"]:  # before anything untrusted exists: every later process is counted
    with open(group + "/cgroup.procs", "w") as file:
        file.write("0")
uid = config["uid"]
if config["view"]:
    root = os.getcwd()  # the host's sandbox directory; in this mount namespace a fresh tmpfs covers it
    with open("solution.py", "rb") as file:
        program = file.read()
    mount("none", "/", None, REC | PRIVATE, None)  # nothing mounted below propagates to the host
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,nr_inodes=256,mode=755")
    for path in config["binds"]:
        target = root + path
        os.makedirs(target, mode=0o755, exist_ok=True)
        mount(path, target, None, BIND | REC, None)
        mount("none", target, None, BIND | REMOUNT | RDONLY | NOSUID | NODEV, None)
    for path, points_to in config["links"]:
        os.symlink(points_to, root + path)
    for place in ("/tmp", "/dev/shm", "/sandbox"):
        os.makedirs(root + place, mode=0o755, exist_ok=True)
        mount("tmpfs", root + place, "tmpfs", NOSUID | NODEV,
              f"size={config['tmpfs_bytes']},nr_inodes={config['tmpfs_files']},mode=1777")
    for device in ("null", "zero", "random", "urandom"):
        open(root + "/dev/" + device, "w").close()
        mount("/dev/" + device, root + "/dev/" + device, None, BIND, None)
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC, None)
    with open(root + "/sandbox/solution.py", "wb") as file:
        file.write(program)
    os.chmod(root + "/sandbox", 0o700)
    if uid is not None:
        os.chown(root + "/sandbox", uid, uid)
        os.chown(root + "/sandbox/solution.py", uid, uid)
    os.chroot(root)
    os.chdir("/sandbox")
child = os.fork()
if child == 0:
    try:
        for name, value in config["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: no setuid binary gives root back
            raise OSError(ctypes.get_errno(), "prctl")
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        harness = compile(sys.argv[2], "<string>", "exec")
        sys.argv = ["-c", sys.argv[3]]
    except BaseException:
        os._exit(126)  # the harness could not start: no result record, nothing passed
    # Deliberate: the harness runs in this forked interpreter (as `python -I -c HARNESS` would, already
    # started), not in a second exec'd one: one interpreter start per run instead of two.
    exec(harness, {"__name__": "__main__", "__builtins__": __builtins__})
else:
    os.closerange(0, 1 << 16)  # the pipes are the harness's: the grader sees them close when its processes do
    status = 1
    while True:  # reap every orphan the program leaves (pid 1 inherits them) until the harness is done
        try:
            done, status = os.wait()
        except ChildProcessError:
            break
        if done == child:
            break
    code = os.waitstatus_to_exitcode(status)
    os._exit(code if code >= 0 else 128 - code)
"""


#### Setting up: which isolation layers work here (probed once)

_setup = None
_setup_lock = threading.Lock()
_uids_in_use = {}  # uid: the file descriptor holding its lock
_UID_LOCK_DIRECTORY = os.path.join(tempfile.gettempdir(), "zerorl-uid-locks")
_uids_quarantined = set()  # uids whose processes could not all be killed
_uid_lock = threading.Lock()


def _namespace_flags(as_root):
    """unshare options, strongest first: network + PID + private /proc, then network only."""
    user = [] if as_root else ["-r"]  # a normal user needs a user namespace to create the others
    return [user + ["-n", "-p", "-f", "--kill-child", "-m", "--mount-proc"], user + ["-n"]]


_PROBE_PROGRAM = '''
import fractions, os, socket  # fractions: a module the harness has not imported, read as the sandbox uid
interfaces = sorted(name for _, name in socket.if_nameindex())
uid = os.getuid()
parent = os.getppid()
with open("/proc/mounts") as file:
    mounts = [line.split()[1:3] for line in file]
private = [place for place in ("/tmp", "/dev/shm") if [place, "tmpfs"] in mounts]
'''


def _probe(python, unshare_prefix, uid, view, use_cgroups):
    """Run a tiny program through the full sandbox: {"uid", "interfaces", "parent" (its parent's pid: 1
    under INIT in a PID namespace), "private" (/tmp, /dev/shm on their own tmpfs), "grader_visible"}, or
    None if it fails."""
    grader = os.path.dirname(os.path.abspath(__file__))
    line = f"print(json.dumps([uid, interfaces, parent, private, os.path.exists({grader!r})]))"
    uid = _take_uid() if uid is not None else None  # locked like any run's: another grader may be running
    try:
        result = _run_sandboxed(program=_PROBE_PROGRAM, mode="assert", tests={"setup": "", "asserts": [line]},
                                python=python, unshare_prefix=unshare_prefix, uid=uid, timeout_s=10.0,
                                memory_mb=DEFAULT_MEMORY_MB, output_bytes=4096,
                                max_open_files=DEFAULT_MAX_OPEN_FILES, max_processes=DEFAULT_MAX_PROCESSES,
                                max_file_bytes=DEFAULT_MAX_FILE_BYTES, python_guard=False,
                                stop_at_first_failure=True, setup_line="import json\n", view=view,
                                use_cgroups=use_cgroups)
    except (OSError, SandboxError):
        return None
    finally:
        if uid is not None:
            _give_back_uid(uid)
    if result["passed"] != [True]:
        return None
    found = json.loads(result["stdout"].strip().splitlines()[-1])
    return dict(zip(("uid", "interfaces", "parent", "private", "grader_visible"), found))


def _cgroups_work():
    """Whether this process can create a memory and a pids cgroup (cgroup v1, as root)."""
    try:
        made = _make_cgroups(f"zerorl-probe-{os.getpid()}", memory_mb=64, max_processes=8)
    except OSError:
        return False
    return _remove_cgroups(made)


def _usable_by_everyone(path):
    """Whether every directory above the file lets others in and the file is readable and executable by others
    (what the sandbox uid needs on the host)."""
    path = os.path.realpath(path)
    try:
        if os.stat(path).st_mode & 0o005 != 0o005:
            return False
        parent = os.path.dirname(path)
        while True:
            if not os.stat(parent).st_mode & 0o001:
                return False
            if parent == os.path.dirname(parent):
                return True
            parent = os.path.dirname(parent)
    except OSError:
        return False


def _python_candidates():
    """The interpreter for programs: ours, else the system's. As root, those the sandbox uid can use on the
    host come first (as before the filesystem view, which would make ours usable: a venv with many
    packages starts slower, and programs keep the same interpreter as without the view)."""
    candidates = [sys.executable]
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(path) and os.path.realpath(path) != os.path.realpath(sys.executable):
            candidates.append(path)
    if os.geteuid() == 0:
        candidates.sort(key=lambda path: not _usable_by_everyone(path))
    return candidates


def sandbox_setup():
    """How programs run here, decided once: {"python", "unshare_prefix", "drop_uid", "view", "cgroups",
    "layers" ({layer: "active ..." or "MISSING ..."}), "status"}."""
    global _setup
    with _setup_lock:
        if _setup is not None:
            return _setup
        as_root = os.geteuid() == 0
        unshare = shutil.which("unshare")
        use_cgroups = as_root and _cgroups_work()
        candidates = [[unshare] + flags for flags in _namespace_flags(as_root)] if unshare else []
        attempts = [(prefix, python, uid, view) for uid in ([SANDBOX_UID_BASE] if as_root else []) + [None]
                    for prefix in candidates + [[]] for python in _python_candidates()
                    for view in ((True, False) if "-m" in prefix else (False,))]
        chosen = None
        for prefix, python, uid, view in attempts:
            if uid is None and as_root:
                python = sys.executable  # the uid cannot read any interpreter: run as root, say so
            found = _probe(python, prefix, uid, view, use_cgroups)
            if found is not None:
                chosen = (prefix, python, uid is not None, view, found)
                break
        if chosen is None:
            raise RuntimeError("reward_code: cannot run a Python program at all (not even without a sandbox)")
        prefix, python, drop_uid, view, found = chosen
        flags = " ".join(prefix[1:])
        layers = {
            "network": (f"active (unshare {flags}: only a loopback device, down)" if prefix and
                        found["interfaces"] == ["lo"] else "MISSING: " + (
                            "unshare is not installed" if not unshare else "the kernel refuses new namespaces")),
            "pid namespace + trusted init": (
                "active (the program's processes all die with INIT, setsid or not)" if "-p" in prefix and
                found["parent"] == 1 else "MISSING: programs can see and signal this user's processes; what "
                "they leave running is killed only by uid" + ("" if drop_uid else " (not at all: no uid)")),
            "uid": (f"active (uid {SANDBOX_UID_BASE}+slot, no_new_privs, killed and checked after each run)"
                    if drop_uid else f"MISSING: programs run as this user (uid {os.geteuid()}) and can touch "
                                     "its files"),
            "cgroup memory/pids": ("active (one v1 memory and pids cgroup per run: memory_mb for the whole "
                                   "program, max_processes processes)" if use_cgroups else
                                   "MISSING: memory and processes limited per process (rlimits) only"),
            "private /tmp /dev/shm": ("active (fresh size-capped tmpfs per run)" if view and
                                      sorted(found["private"]) == ["/dev/shm", "/tmp"] else
                                      "MISSING: /tmp and /dev/shm are the host's; files left there persist"),
            "filesystem view": ("active (a private root: read-only /usr, /lib*, the interpreter; no /work, "
                                "/root, /run, /home; the working directory is a tmpfs)" if view and
                                not found["grader_visible"] else
                                "MISSING: every world-readable file of the host is readable, host UNIX "
                                "sockets are reachable"),
        }
        interpreter = "" if python == sys.executable else f"; programs run with {python} (sys.executable " \
                                                          "is not readable by the sandbox uid)"
        status = "\n".join(f"{name:30s} {state}" for name, state in layers.items())
        status += ("\nlimits: wall and CPU time, memory (RLIMIT_AS per process" +
                   (" and the cgroup per program" if use_cgroups else "") +
                   "), output, file size, open files, processes" + interpreter)
        missing = [name for name, state in layers.items() if state.startswith("MISSING")]
        if missing:
            print(f"reward_code: WARNING: weak sandbox, missing layers: {', '.join(missing)}. "
                  "Run `python reward_code.py --status` for details.", file=sys.stderr)
        _setup = {"python": python, "unshare_prefix": prefix, "drop_uid": drop_uid, "view": view,
                  "cgroups": use_cgroups, "layers": layers, "status": status}
        return _setup


def sandbox_status():
    """Which isolation layers are active on this machine: one line per layer."""
    return sandbox_setup()["status"]


def _take_uid():
    """A free sandbox uid: free in this process and locked (flock) against every other grader on the machine,
    since each run kills every process of its uid (two trainings or test runs must never share one)."""
    os.makedirs(_UID_LOCK_DIRECTORY, mode=0o700, exist_ok=True)
    with _uid_lock:
        slot = 0
        while True:
            uid = SANDBOX_UID_BASE + slot
            slot += 1
            if uid in _uids_in_use or uid in _uids_quarantined:
                continue
            fd = os.open(os.path.join(_UID_LOCK_DIRECTORY, str(uid)), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            _uids_in_use[uid] = fd
            return uid


def _give_back_uid(uid):
    with _uid_lock:
        fd = _uids_in_use.pop(uid, None)
        if fd is not None and uid not in _uids_quarantined:
            os.close(fd)  # releases the lock; a quarantined uid stays locked until this process ends


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


def _processes_of(uid):
    """Host pids of every live process whose uid is `uid` (a zombie runs nothing: its parent reaps it)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == uid:
                with open(f"/proc/{entry}/stat") as file:
                    if file.read().rpartition(")")[2].split()[0] != "Z":
                        found.append(int(entry))
        except (OSError, IndexError):
            continue
    return found


def _kill_every_process_of(uid, patience_s=5.0):
    """SIGKILL every process of the uid until none is left (a PID namespace dies in the background, and a
    process may fork while we kill). True when none is left: only then may the uid run another program."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        alive = _processes_of(uid)
        if not alive:
            return True
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)
    return not _processes_of(uid)


#### One cgroup per run (cgroup v1: memory and pids), where the machine lets us create them

CGROUP_ROOTS = {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}


def _make_cgroups(name, *, memory_mb, max_processes):
    """Create the run's memory and pids cgroups with their limits; their paths (INIT enters them)."""
    made = []
    try:
        for controller, root in CGROUP_ROOTS.items():
            path = os.path.join(root, name)
            os.mkdir(path)
            made.append(path)
            if controller == "memory":  # the whole program: every process, and its tmpfs files
                limits = [("memory.limit_in_bytes", memory_mb << 20), ("memory.memsw.limit_in_bytes", memory_mb << 20)]
            else:
                limits = [("pids.max", max_processes)]
            for file_name, value in limits:
                if os.path.exists(os.path.join(path, file_name)):
                    with open(os.path.join(path, file_name), "w") as file:
                        file.write(str(value))
    except OSError:
        _remove_cgroups(made)
        raise
    return made


def _remove_cgroups(paths, patience_s=5.0):
    """Kill whatever each cgroup still lists until it is empty, then remove it. True when all are gone."""
    deadline, ok = time.monotonic() + patience_s, True
    for path in paths:
        while True:
            try:
                with open(os.path.join(path, "cgroup.procs")) as file:
                    pids = [int(line) for line in file if line.strip()]
            except (OSError, ValueError):
                break
            if not pids:
                try:
                    os.rmdir(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    if time.monotonic() < deadline:  # the last exit is still being accounted
                        time.sleep(0.001)
                        continue
                    ok = False
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                ok = False
                break
            time.sleep(0.001)
    return ok


#### Running one program

def _sandbox_environment(directory, view):
    home = "/sandbox" if view else directory
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _remove_directory(directory):
    """Remove the sandbox directory, never touching anything outside it and never raising (deep trees,
    paths longer than PATH_MAX, read-only directories, a directory the program removed itself). It walks
    with directory file descriptors, one level open at a time, going back up through "..": no recursion,
    no long paths, no symlink followed. Returns True when the directory is gone."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        fd = os.open(directory, flags)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    names = []  # the path from `directory` down to fd, one name per level
    try:
        while True:
            try:
                os.fchmod(fd, 0o700)  # a directory inside the sandbox directory: ours to change
                entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in os.scandir(fd)]
            except OSError:
                return False
            child = next((name for name, is_directory in entries if is_directory), None)
            for name, is_directory in entries:
                if not is_directory:
                    try:
                        os.unlink(name, dir_fd=fd)
                    except OSError:
                        return False  # cannot happen as the owner; never loop on it
            if child is not None:
                try:
                    child_fd = os.open(child, flags, dir_fd=fd)
                except OSError:
                    return False
                os.close(fd)
                fd = child_fd
                names.append(child)
                continue
            if not names:
                break
            try:
                parent_fd = os.open("..", flags, dir_fd=fd)
            except OSError:
                return False
            os.close(fd)
            fd = parent_fd
            try:
                os.rmdir(names.pop(), dir_fd=fd)
            except OSError:
                return False
    finally:
        os.close(fd)
    try:
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _filesystem_view_binds(python):
    """What the interpreter needs, bound read-only into the private root: the system directories and the
    interpreters' prefixes. Top-level symlinks (/bin -> usr/bin on merged-/usr systems) are recreated."""
    binds, links = [], []
    for path in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(path):
            links.append((path, os.readlink(path)))
        elif os.path.isdir(path):
            binds.append(path)
    real = os.path.dirname(os.path.dirname(os.path.realpath(python)))
    ours = {sys.prefix, sys.base_prefix, sys.exec_prefix} if python == sys.executable else set()
    for prefix in ours | {real}:
        prefix = os.path.realpath(prefix)
        if os.path.isdir(prefix) and not any(prefix == b or prefix.startswith(b + os.sep) for b in binds):
            binds.append(prefix)
    return binds, links


def _start_run(*, directory, program, python, unshare_prefix, uid, view, use_cgroups, memory_mb, max_processes,
               rlimits, harness_config, pass_fds):
    """Write the program, create the run's cgroups, start unshare + INIT (which starts the harness).
    Returns (process, cgroups)."""
    with open(os.path.join(directory, "solution.py"), "w") as file:
        file.write(program)
    os.chmod(directory, 0o700)
    if uid is not None and not view:  # without the private view the program works in this directory
        os.chown(directory, uid, uid)
        os.chown(os.path.join(directory, "solution.py"), uid, uid)
    cgroups = (_make_cgroups(f"zerorl-{os.getpid()}-{os.path.basename(directory)}", memory_mb=memory_mb,
                             max_processes=max_processes) if use_cgroups else [])
    binds, links = _filesystem_view_binds(python) if view else ([], [])
    init_config = {"cgroups": cgroups, "uid": uid, "view": view, "binds": binds, "links": links,
                   "tmpfs_bytes": 4 * rlimits["RLIMIT_FSIZE"], "tmpfs_files": 1024, "rlimits": rlimits}
    command = list(unshare_prefix) + [python, "-I", "-c", INIT, json.dumps(init_config), HARNESS,
                                      json.dumps(harness_config)]
    try:
        process = subprocess.Popen(command, cwd=directory, env=_sandbox_environment(directory, view),
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   pass_fds=pass_fds, start_new_session=True)
    except BaseException:
        _remove_cgroups(cgroups)
        raise
    return process, cgroups


def _end_run(*, process, cgroups, uid, directory, ended=True):
    """Kill everything the run started, wait until its uid has no process, remove its cgroups and its
    directory. ended: the run finished by itself (not killed at a deadline or for its output), so unshare
    gets a moment to exit with the program's status. Never raises; returns the list of what went wrong
    (empty when all is clean)."""
    problems = []
    if process is not None:
        if ended:
            try:  # the pipes closed: unshare exits on its own at once (its status is the program's)
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        try:  # unshare and INIT: with INIT gone the kernel kills the whole PID namespace
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problems.append("unshare did not exit")
    if not _remove_cgroups(cgroups):
        problems.append("a cgroup could not be emptied or removed")
    if uid is not None and not _kill_every_process_of(uid):
        problems.append(f"processes of uid {uid} survived")
    if not _remove_directory(directory):
        problems.append("the sandbox directory could not be removed")
    return problems


class SandboxError(RuntimeError):
    """One run's isolation or cleanup failed: that program gets reward 0 and counts in sandbox_errors."""


def _run_sandboxed(*, program, mode, tests=None, stdin="", python, unshare_prefix, uid, timeout_s, memory_mb,
                   output_bytes, max_open_files, max_processes, max_file_bytes, python_guard,
                   stop_at_first_failure, setup_line="", plan=None, view=None, use_cgroups=None):
    """Run one program once. mode "stdio": `stdin` is its input; mode "assert": `tests` is
    {"setup", "asserts"} and `plan` (see _test_plan) says how each test is decided; without a plan every
    test runs in the program's interpreter (the sandbox probe). Returns {"stdout", "stderr", "returncode",
    "passed" (assert mode: a bool per assert), "timed_out", "output_overflow", "seconds", "in_process_tests"}.
    view / use_cgroups: the private filesystem view and the per-run cgroups (None: as sandbox_setup chose).
    Raises SandboxError when the run could not be torn down cleanly."""
    view = bool(_setup and _setup["view"]) if view is None else view
    use_cgroups = bool(_setup and _setup["cgroups"]) if use_cgroups is None else use_cgroups
    count = len(tests["asserts"]) if mode == "assert" else 1
    wall_s = STARTUP_ALLOWANCE_S + timeout_s * (count + (2 if mode == "assert" else 0))  # + program, setup
    if mode == "assert" and plan is None:
        plan = {"setup": setup_line + tests["setup"], "asserts": list(tests["asserts"]), "names": [],
                "in_process": set(range(count)), "may_fall_back": False}
    directory = tempfile.mkdtemp(prefix="zerorl-sandbox-")
    token = secrets.token_hex(16)
    result_read, result_write = os.pipe()
    request_read, request_write = os.pipe() if mode == "assert" else (None, None)
    process, cgroups, timed_out, overflow = None, [], False, False
    verdict = {"passed": [False] * count, "in_process_tests": 0}
    try:
        processes_limit = max_processes if uid is not None or os.geteuid() == 0 else \
            _processes_of_this_user() + max_processes
        rlimits = {"RLIMIT_CPU": math.ceil(wall_s), "RLIMIT_AS": memory_mb << 20, "RLIMIT_FSIZE": max_file_bytes,
                   "RLIMIT_NOFILE": max_open_files, "RLIMIT_NPROC": processes_limit, "RLIMIT_CORE": 0}
        config = {"mode": mode, "guard": python_guard, "timeout_s": timeout_s, "result_fd": result_write,
                  "request_fd": request_read, "value_depth": VALUE_DEPTH, "argument_depth": ARGUMENT_DEPTH}
        start = time.monotonic()
        process, cgroups = _start_run(directory=directory, program=program, python=python,
                                      unshare_prefix=unshare_prefix, uid=uid, view=view, use_cgroups=use_cgroups,
                                      memory_mb=memory_mb, max_processes=max_processes, rlimits=rlimits,
                                      harness_config=config,
                                      pass_fds=(result_write,) + ((request_read,) if mode == "assert" else ()))
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
        for fd in (result_read, result_write, request_read, request_write):
            if fd is not None:
                os.close(fd)
        problems = _end_run(process=process, cgroups=cgroups, uid=uid, directory=directory,
                            ended=not (timed_out or overflow))
        if problems and uid is not None and any("uid" in problem for problem in problems):
            with _uid_lock:
                _uids_quarantined.add(uid)  # never handed out again in this process
    if problems:
        raise SandboxError("; ".join(problems))
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


def _end_channel(channel, reason):
    channel["over"] = reason
    raise _RunOver(reason)


def _take_answer(channel):
    """The next complete answer message from the answer pipe's bytes, or None if it has not all come."""
    buffer = channel["outputs"]["result"]
    newline = buffer.find(b"\n", 0, 24)
    if newline < 0:
        if len(buffer) >= 24:
            _end_channel(channel, "malformed")
        return None
    header = bytes(buffer[:newline])
    if not header.isdigit() or int(header) > ANSWER_BYTES:
        _end_channel(channel, "malformed")
    end = newline + 1 + int(header)
    if len(buffer) < end:
        return None
    data = bytes(buffer[newline + 1:end])
    del buffer[:end]
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError, MemoryError):  # a nested or mangled message fails the run, no more
        _end_channel(channel, "malformed")
    if type(answer) is not dict or answer.get("token") != channel["token"] or answer.get("seq") != channel["seq"]:
        _end_channel(channel, "malformed")
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
                    _end_channel(channel, "ended")  # the answer pipe closed without an answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _end_channel(channel, "timeout")
            for key, _ in selector.select(remaining):
                if key.fd == request_fd:
                    try:
                        pending = pending[os.write(request_fd, pending[:65536]):]
                    except BlockingIOError:
                        continue
                    except OSError:  # the harness is gone
                        _end_channel(channel, "ended")
                    if not pending:
                        selector.unregister(request_fd)
                    continue
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                outputs[channel["readers"][key.fd]] += chunk
                if len(outputs["stdout"]) + len(outputs["stderr"]) > channel["output_bytes"]:
                    _end_channel(channel, "overflow")
                if len(outputs["result"]) > ANSWER_BYTES + 24:
                    _end_channel(channel, "malformed")
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
                if not result["timed_out"]:
                    # A test the reference fails in its own interpreter as well is broken for every program:
                    # it stays decided here, where a program cannot make it pass (a shadowed builtin, say).
                    plan["in_process"] = {index for index in plan["in_process"] if result["passed"][index]}
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


_warned_errors = set()


def _warn_sandbox_error(error):
    """Say once per kind of error that a program's grading failed (it is counted in sandbox_errors)."""
    kind = type(error).__name__
    if kind not in _warned_errors:
        _warned_errors.add(kind)
        print(f"reward_code: WARNING: grading a program failed ({kind}: {str(error)[:200]}); it gets reward 0 "
              "and counts in sandbox_errors (further errors of this kind are not printed)", file=sys.stderr)


def grade_code_batch(responses, tests, *, partial_credit=False, num_workers=None, timeout_s=DEFAULT_TIMEOUT_S,
                     memory_mb=DEFAULT_MEMORY_MB, output_bytes=DEFAULT_OUTPUT_BYTES,
                     max_open_files=DEFAULT_MAX_OPEN_FILES, max_processes=DEFAULT_MAX_PROCESSES,
                     max_file_bytes=DEFAULT_MAX_FILE_BYTES, python_guard=True):
    """Grade one batch of responses against their test specs (tests[i] for responses[i]).

    Returns a dict of lists, one entry per response: pred (the extracted program or None), correct
    (every test passed), reward (1.0 or 0.0; with partial_credit the fraction passed), timeouts (some
    test hit a time limit), passed and total (tests), in_process_tests (how many of its tests ran in the
    program's own interpreter, see the module docstring), sandbox_errors (grading this program failed: its
    result could not be read, its run could not be cleaned up...; its reward is 0). The limits are
    documented at the top of the module. Raises only for the caller's mistakes (bad arguments).
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
    grade_unsafely = functools.partial(_grade_one, partial_credit=partial_credit, setup=setup, limits=limits)

    def grade(code, spec):
        """(passed, total, timed_out, in_process_tests, sandbox_error): whatever goes wrong in grading one
        program (its result, its cleanup, a pipe, a RecursionError) is that program's 0, never the batch's
        crash."""
        try:
            return (*grade_unsafely(code, spec), False)
        except Exception as error:  # noqa: BLE001 (deliberate: a program's behaviour must not stop training)
            _warn_sandbox_error(error)
            return 0, count_tests(spec), False, 0, True
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
            "in_process_tests": [outcome[3] for outcome in outcomes],
            "sandbox_errors": [outcome[4] for outcome in outcomes]}


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
