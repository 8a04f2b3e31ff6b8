"""reward_code.py: extraction, the reference solutions of HumanEval and MBPP (all pass; broken bodies fail),
stdin/stdout problems from MapCoder's xCodeEval file, partial credit, and hostile programs that must stay
inside their limits and their sandbox directory."""

import glob
import os
import socket
import time

import pytest

import reward_code
from conftest import shared_data
from data.problems import load_problems
from reward_code import extract_code, grade_code_batch, normalize_output, sandbox_setup, sandbox_status


def fenced(code):
    return f"Here is my solution.\n```python\n{code}\n```\nDone."


#### Extraction and the output rule

def test_extract_code_takes_the_last_python_block():
    assert extract_code("no code here") is None
    assert extract_code("```python\na = 1\n```\ntext\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("```\nbare = 1\n```") == "bare = 1\n"
    assert extract_code("```python\nx = 1\n```\n```cpp\nint main() {}\n```") == "x = 1\n"  # other languages skipped
    assert extract_code("```python\nx = 1\n```\n```python\ncut off at the length lim") == "x = 1\n"
    assert extract_code("```python\nunclosed") is None


def test_output_comparison_ignores_trailing_whitespace_only():
    assert normalize_output("1 2  \r\n3\n\n\n") == normalize_output("1 2\n3") == ["1 2", "3"]
    assert normalize_output(" 1") != normalize_output("1")  # leading spaces count
    assert normalize_output("1\n\n2") != normalize_output("1\n2")  # blank lines inside count


def test_sandbox_status_names_every_layer():
    status = sandbox_status()
    for layer in ("network", "pid namespace + trusted init", "uid", "cgroup memory/pids", "private /tmp /dev/shm",
                  "filesystem view"):
        assert layer in status


#### Partial credit and the result channel

def test_partial_credit_two_of_three_asserts():
    tests = {"kind": "assert", "setup": "", "asserts": ["assert f(1) == 2", "assert f(2) == 3", "assert f(0) == 0"]}
    response = fenced("def f(x):\n    return x + 1")
    graded = grade_code_batch([response, "no code"], [tests, tests], partial_credit=True)
    assert graded["passed"] == [2, 0] and graded["total"] == [3, 3]
    assert graded["reward"][0] == pytest.approx(2 / 3) and graded["reward"][1] == 0.0
    assert graded["correct"] == [False, False] and graded["pred"][1] is None
    assert grade_code_batch([response], [tests])["reward"] == [0.0]  # all or nothing without partial credit
    stdio = {"kind": "stdio", "cases": [{"input": "1", "output": "2"}, {"input": "5", "output": "7"}]}
    graded = grade_code_batch([fenced("print(int(input()) + 1)")], [stdio], partial_credit=True)
    assert graded["passed"] == [1] and graded["reward"] == [0.5]


#### Real data: reference solutions pass, broken ones fail

def test_humaneval_canonical_solutions_pass_and_broken_bodies_fail():
    problems = load_problems(shared_data("code", "humaneval", "test.jsonl"), keep_fields=("canonical_solution",))
    assert len(problems) == 164
    tests = [p["tests"] for p in problems]
    canonical = [fenced(p["tests"]["prefix"] + p["canonical_solution"]) for p in problems]
    start = time.monotonic()
    graded = grade_code_batch(canonical, tests)
    print(f"HumanEval: 164 canonical solutions in {time.monotonic() - start:.1f} s")
    assert graded["correct"] == [True] * 164
    # The canonical body alone (a completion, as a base model writes it) also passes: the prompt comes first.
    assert grade_code_batch([fenced(problems[0]["canonical_solution"])], tests[:1])["correct"] == [True]
    broken = [fenced(p["tests"]["prefix"] + ("    pass\n" if i % 2 else "    raise RuntimeError('broken')\n"))
              for i, p in enumerate(problems)]
    assert grade_code_batch(broken, tests)["correct"] == [False] * 164


def test_mbpp_reference_solutions_pass():
    problems = load_problems(shared_data("code", "mbpp", "mbpp_revised.jsonl"), keep_fields=("code", "task_id"))
    assert len(problems) == 974
    start = time.monotonic()
    graded = grade_code_batch([fenced(p["code"]) for p in problems], [p["tests"] for p in problems])
    print(f"MBPP: 974 reference solutions in {time.monotonic() - start:.1f} s")
    assert [p["task_id"] for p, ok in zip(problems, graded["correct"]) if not ok] == []


def test_mbpp_original_file_broken_references_fail_and_the_rest_pass():
    # SOURCES.md: in the 2251e8c text the references of 341, 596 and 642 fail their own tests (set order,
    # sys.getsizeof); the other 971 pass (checked in the revised file above, which differs only there).
    # 341's failure was CPython's iteration order of the set literal {12, ..., 16} in the test's own
    # interpreter; its argument now reaches the program rebuilt from plain values (a set whose order is
    # not part of its value), and the reference passes. 596 and 642 (sys.getsizeof) still fail.
    problems = load_problems(shared_data("code", "mbpp", "mbpp.jsonl"), keep_fields=("code", "task_id"))
    chosen = [p for p in problems if p["task_id"] in (340, 341, 596, 642)]
    graded = grade_code_batch([fenced(p["code"]) for p in chosen], [p["tests"] for p in chosen])
    assert dict(zip([p["task_id"] for p in chosen], graded["correct"])) == {340: True, 341: True, 596: False,
                                                                           642: False}


# Solutions written for a few easy Codeforces problems of MapCoder's xCodeEval file (by src_uid).
XCODEEVAL_SOLUTIONS = {
    "8de14db41d0acee116bd5d8079cb2b02":  # remove characters so that "xxx" does not occur
        "import re\ninput()\nprint(sum(len(run) - 2 for run in re.findall('x{3,}', input())))",
    "3dc56bc08606a39dd9ca40a43c452f09":  # make a triangle from three sticks
        "a, b, c = sorted(map(int, input().split()))\nprint(max(0, c - a - b + 1))",
    "5e74750f44142624e6da41d4b35beb9a":  # the even-odd game
        "print('Mahmoud' if int(input()) % 2 == 0 else 'Ehab')",
    "7bffa6e8d2d21bbb3b7f4aec109b3319":  # three friends meet on a line
        "x = list(map(int, input().split()))\nprint(max(x) - min(x))",
    "757cd804aba01dc4bc108cb0722f68dc":  # slimes: the set bits of n, highest first
        "n = int(input())\nprint(' '.join(str(b + 1) for b in range(n.bit_length() - 1, -1, -1) if n >> b & 1))",
}


def test_stdio_solutions_pass_on_xcodeeval_problems_and_a_wrong_one_fails():
    problems = load_problems(shared_data("code", "mapcoder", "xCodeEval", "prog_syn_val.jsonl"),
                             keep_fields=("src_uid",))
    by_uid = {p["src_uid"]: p for p in problems}
    chosen = [by_uid[uid] for uid in XCODEEVAL_SOLUTIONS]
    assert all(p["tests"]["kind"] == "stdio" and "standard input" in p["problem"] for p in chosen)
    responses = [fenced(XCODEEVAL_SOLUTIONS[p["src_uid"]]) for p in chosen]
    wrong = fenced("input()\nprint(0)")  # right on some examples, not on all
    graded = grade_code_batch(responses + [wrong], [p["tests"] for p in chosen] + [chosen[1]["tests"]],
                              partial_credit=True)
    assert graded["correct"] == [True] * len(chosen) + [False]
    assert 0 < graded["passed"][-1] < graded["total"][-1]


def test_apps_stdio_rows_load_deduplicated():
    problems = load_problems(shared_data("code", "mapcoder", "APPS", "selected150.jsonl"))
    assert len(problems) == 49  # SOURCES.md: 52 stdio rows, 49 distinct; call-based rows are skipped
    assert all(p["tests"]["kind"] == "stdio" and p["tests"]["cases"] for p in problems)
    # A stdio program that prints the first case's answer passes that case only.
    first = problems[0]["tests"]
    graded = grade_code_batch([fenced(f"print({first['cases'][0]['output']!r})")], [first], partial_credit=True)
    assert graded["passed"][0] >= 1 and not graded["correct"][0]


#### Hostile programs: each contained within its limits, nothing outside its directory changed

HOSTILE_BOUND_S = 30


def sandbox_uids_running():
    """Processes of the sandbox uids still alive (there must be none after a batch)."""
    found = []
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            uid = int(next(line for line in open(status) if line.startswith("Uid:")).split()[1])
        except (OSError, StopIteration, ValueError):
            continue
        if reward_code.SANDBOX_UID_BASE <= uid < reward_code.SANDBOX_UID_BASE + 10_000:
            found.append(status)
    return found


def leftover_directories():
    return set(glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "zerorl-sandbox-*")))


def run_hostile(code, tests=None, **options):
    """Grade one hostile program (by default as a stdio program whose only case it cannot pass honestly);
    check it stayed in bounds, got reward 0, and left no process and no directory behind."""
    tests = tests or {"kind": "stdio", "cases": [{"input": "", "output": "the answer"}]}
    before = leftover_directories()
    start = time.monotonic()
    graded = grade_code_batch([fenced(code)], [tests], timeout_s=options.pop("timeout_s", 2.0), **options)
    seconds = time.monotonic() - start
    assert seconds < HOSTILE_BOUND_S, f"took {seconds:.1f} s"
    assert graded["reward"] == [0.0] and graded["correct"] == [False]
    assert leftover_directories() <= before, "the sandbox directory was not removed"
    if sandbox_setup()["drop_uid"]:
        assert sandbox_uids_running() == []
    return graded, seconds


GUARD = [pytest.param(False, id="os-layers-only"), pytest.param(True, id="with-python-guard")]


@pytest.mark.parametrize("python_guard", GUARD)
def test_infinite_loop_is_killed(python_guard):
    graded, _ = run_hostile("while True:\n    pass", python_guard=python_guard, timeout_s=1.0)
    assert graded["timeouts"] == [True]
    asserts = {"kind": "assert", "setup": "", "asserts": ["assert f()"]}
    graded, _ = run_hostile("def f():\n    while True:\n        pass", asserts, python_guard=python_guard,
                            timeout_s=1.0)
    assert graded["timeouts"] == [True]
    # A loop that swallows exceptions and ignores the timer's signal still dies at the wall-clock limit.
    stubborn = ("import signal\ndef f():\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                "    while True:\n        try:\n            pass\n        except BaseException:\n            pass")
    graded, _ = run_hostile(stubborn, asserts, python_guard=python_guard, timeout_s=1.0)
    assert graded["timeouts"] == [True]


@pytest.mark.parametrize("python_guard", GUARD)
def test_fork_bomb_is_contained(python_guard):
    bomb = ("import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass")
    run_hostile(bomb, python_guard=python_guard)
    # setsid children leave the process group; the PID namespace still takes them down.
    escaping = ("import os, time\nfor _ in range(5):\n    if os.fork() == 0:\n        os.setsid()\n"
                "        time.sleep(1000)\nprint('the answer')\nos._exit(0)")
    run_hostile(escaping, python_guard=False)


def test_huge_allocation_and_huge_output_are_stopped():
    graded, seconds = run_hostile("x = bytearray(10 * 1024 ** 3)\nprint('the answer')")
    assert seconds < 10
    graded, seconds = run_hostile("import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n"
                                  "    sys.stdout.write(chunk)\nprint('the answer')")
    assert seconds < 10


def files_outside(tmp_path):
    """A canary in pytest's tmp_path, and one in a world-traversable directory (only permissions guard it)."""
    private = tmp_path / "canary.txt"
    private.write_text("canary")
    open_directory = tmp_path.parent / f"zerorl-open-{os.getpid()}"
    open_directory.mkdir(exist_ok=True)
    open_directory.chmod(0o755)
    public = open_directory / "canary.txt"
    public.write_text("canary")
    public.chmod(0o644)
    return [private, public]


@pytest.mark.parametrize("python_guard", GUARD)
def test_files_outside_the_sandbox_survive(tmp_path, python_guard):
    if not python_guard and not sandbox_setup()["drop_uid"]:
        pytest.skip("not root: without the Python guard a program has this user's file permissions")
    canaries = files_outside(tmp_path)
    for canary in canaries:
        for attack in (f"import os\nos.remove({str(canary)!r})",
                       f"open({str(canary)!r}, 'w').write('overwritten')",
                       f"import shutil\nshutil.rmtree({str(canary.parent)!r})",
                       f"import os\nos.rename({str(canary)!r}, 'stolen.txt')"):
            run_hostile(attack + "\nprint('the answer')", python_guard=python_guard)
            assert canary.read_text() == "canary"
        # Reading a file does not change it, but where only permissions guard a world-readable file the
        # program can read it: that is documented (keep secrets out of world-readable files).


def test_expected_outputs_are_nowhere_the_program_can_look(monkeypatch):
    secret = "EXPECTED-" + os.urandom(8).hex()
    monkeypatch.setenv("ZERORL_SECRET", secret)  # the grader's environment is not passed on either
    search = '''import os
found = set()
for value in os.environ.values():
    found.add(value)
for root in (os.getcwd(), os.environ.get("TMPDIR", "/tmp"), "/tmp", "/dev/shm"):
    for directory, _, files in os.walk(root):
        for name in files:
            try:
                found.add(open(os.path.join(directory, name), errors="replace").read(1 << 20))
            except OSError:
                pass
for pid in os.listdir("/proc"):
    for part in ("cmdline", "environ"):
        try:
            found.add(open(f"/proc/{{pid}}/{{part}}", "rb").read().decode(errors="replace"))
        except OSError:
            pass
hits = [text for text in found if "EXPECTED-" in text]
print(hits[0][hits[0].index("EXPECTED-"):][:25] if hits else "nothing found")
'''
    tests = {"kind": "stdio", "cases": [{"input": "", "output": secret}, {"input": "", "output": secret}]}
    graded, _ = run_hostile(search, tests, python_guard=False, partial_credit=True)
    assert graded["passed"] == [0]


def test_no_network(monkeypatch):
    setup = sandbox_setup()
    if not any(flag == "-n" for flag in setup["unshare_prefix"]):
        pytest.skip("no network namespace on this machine (unshare missing or forbidden): " + sandbox_status())
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    connect = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "    print('connected')\nexcept OSError:\n    print('blocked')\n")
    tests = {"kind": "stdio", "cases": [{"input": "", "output": "connected"}]}
    run_hostile(connect, tests, python_guard=False)
    with pytest.raises(socket.timeout):
        listener.accept()  # nobody came
    listener.close()
    outside = ("import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=2)\nprint('connected')")
    run_hostile(outside, tests, python_guard=False)


@pytest.mark.parametrize("python_guard", GUARD)
def test_killing_the_grader_fails(python_guard):
    grader = os.getpid()
    for attack in ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
                   f"import os, signal\nos.kill({grader}, signal.SIGKILL)",
                   f"import os, signal\nos.killpg(os.getpgid({grader}), signal.SIGKILL)",
                   "import os, signal\nos.kill(-1, signal.SIGKILL)"):
        if attack.endswith("(-1, signal.SIGKILL)") and not python_guard and not sandbox_setup()["drop_uid"] \
                and "-p" not in sandbox_setup()["unshare_prefix"]:
            continue  # kill(-1) as this very user, with no PID namespace, would take the test run down
        try:
            run_hostile(attack + "\nprint('the answer')", python_guard=python_guard)
        except Exception:
            pass
    assert os.getpid() == grader  # still here


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)", "import os\nos._exit(0)", "exit()",
                                       "raise SystemExit"])
def test_exiting_before_the_tests_is_not_a_pass(exit_call):
    humaneval = {"kind": "function_check", "prefix": "def add(a, b):\n    \"\"\"a + b\"\"\"\n",
                 "check": "def check(candidate):\n    assert candidate(1, 2) == 4\n", "entry_point": "add"}
    mbpp = {"kind": "assert", "setup": "", "asserts": ["assert add(1, 2) == 4"]}
    for tests in (humaneval, mbpp):
        run_hostile(exit_call, tests, python_guard=False)
        run_hostile(exit_call, tests, python_guard=True)
        # Inside the tested function too: exiting is not passing.
        run_hostile(f"def add(a, b):\n    {exit_call.replace(chr(10), '; ')}", tests, python_guard=False)


def test_forging_the_result_record_without_the_token_fails():
    forge = ('import json, os, sys\nprint(json.dumps({"passed": [True], "timed_out": False}))\n'
             'for fd in range(3, 64):\n    try:\n'
             '        os.write(fd, json.dumps({"token": "0" * 32, "passed": [True], "timed_out": False}).encode())\n'
             '    except OSError:\n        pass\nos._exit(0)')
    run_hostile(forge, {"kind": "assert", "setup": "", "asserts": ["assert False"]}, python_guard=False)
