"""reward_code.py: verdicts are decided in the grader, not in the program's interpreter.

Every attack below made a wrong program pass when the asserts, the expected values and the result record
lived in the program's own interpreter (the harness before issue 14); each must now get reward 0. Then the
controls: the reference solutions of HumanEval and MBPP all pass, broken bodies fail, partial credit counts
per test, and a test whose arguments are not plain values still runs (in the program's interpreter, counted).
"""

import time

import pytest

import reward_code
from conftest import shared_data
from data.problems import load_problems
from reward_code import decode_value, encode_value, grade_code_batch

TIMEOUT_S = 1.0


def fenced(code):
    return f"```python\n{code}\n```"


def grade(code, tests, **options):
    options.setdefault("timeout_s", TIMEOUT_S)
    return grade_code_batch([fenced(code)], [tests], num_workers=1, **options)


# A function that returns the wrong answer, and the tests it should fail: MBPP style (with and without a
# reference solution) and HumanEval style.
ASSERTS = {"kind": "assert", "setup": "", "asserts": ["assert f(1) == 2", "assert f(2) == 3", "assert f(5) == 6"]}
ASSERTS_WITH_REFERENCE = dict(ASSERTS, reference="def f(x):\n    return x + 1\n")
CHECK = {"kind": "function_check", "prefix": "def f(x):\n    \"\"\"x + 1\"\"\"\n",
         "check": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(7) == 8\n",
         "entry_point": "f"}
SPECS = [pytest.param(ASSERTS, id="asserts"), pytest.param(ASSERTS_WITH_REFERENCE, id="asserts+reference"),
         pytest.param(CHECK, id="check")]

ATTACKS = {
    "always-equal object": (
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
        "    __hash__ = object.__hash__\n"
        "def f(x):\n    return Anything()\n"),
    "int subclass with a rigged __eq__": (
        "class Int(int):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = int.__hash__\n"
        "def f(x):\n    return Int(0)\n"),
    "str subclass with a rigged __eq__": (
        "class Str(str):\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "def f(x):\n    return Str('no')\n"),
    "list of rigged objects": (
        "class Anything:\n"
        "    def __eq__(self, other):\n        return True\n"
        "def f(x):\n    return [Anything()][0]\n"),
    # A trace function replaces the code each test runs with `pass` (in a trace function's 'line' event,
    # writes to f_locals reach the frame).
    "sys.settrace replaces the test's code": (
        "import sys\n"
        "def local(frame, event, arg):\n"
        "    if event == 'line':\n"
        "        variables = frame.f_locals  # once: each read of f_locals refreshes it from the frame\n"
        "        for name in ('code', 'test'):\n"
        "            if name in variables:\n"
        "                variables[name] = compile('pass', 'test.py', 'exec')\n"
        "    return local\n"
        "def tracer(frame, event, arg):\n"
        "    return local if {'code', 'test'} & set(frame.f_code.co_varnames) else None\n"
        "sys.settrace(tracer)\n"
        "def f(x):\n    return 0\n"),
    # Find the harness's state through gc, write a record that says every test passed, exit.
    "forged result record via gc": (
        "import gc, json, os\n"
        "payload = config = None\n"
        "for thing in gc.get_objects():\n"
        "    if type(thing) is dict and 'token' in thing:\n"
        "        payload = thing\n"
        "    if type(thing) is dict and 'result_fd' in thing:\n"
        "        config = thing\n"
        "count = len(payload.get('asserts', [1, 1, 1]))\n"
        "os.write(config['result_fd'], json.dumps({'token': payload['token'], 'passed': [True] * count,\n"
        "                                          'timed_out': False}).encode())\n"
        "os._exit(0)\n"),
    # The same through the frames: the harness's module globals hold the token and the pipe.
    "forged answers via frames": (
        "import json, os, sys\n"
        "frame = sys._getframe()\n"
        "while frame.f_back is not None:\n"
        "    frame = frame.f_back\n"
        "harness = frame.f_globals\n"
        "token = (harness.get('payload') or harness.get('start'))['token']\n"
        "fd = harness['config']['result_fd']\n"
        "if 'payload' in harness:  # the harness before issue 14: one record\n"
        "    count = len(harness['payload']['asserts'])\n"
        "    os.write(fd, json.dumps({'token': token, 'passed': [True] * count, 'timed_out': False}).encode())\n"
        "    os._exit(0)\n"
        "for seq in range(1, 12):  # now: answers in the conversation's framing, for any request\n"
        "    data = json.dumps({'token': token, 'seq': seq, 'loaded': True, 'callables': ['f', 'check'],\n"
        "                       'passed': True, 'value': 2}).encode()\n"
        "    os.write(fd, b'%d\\n' % len(data) + data)\n"
        "os._exit(0)\n"),
    "patched compile": (
        "import builtins\n"
        "real_compile = builtins.compile\n"
        "def compile(source, name, mode, *args, **kwargs):\n"
        "    return real_compile('pass', name, mode)\n"
        "builtins.compile = compile\n"
        "def f(x):\n    return 0\n"),
    "patched json.dumps": (
        "import json\n"
        "real_dumps = json.dumps\n"
        "def dumps(thing, *args, **kwargs):\n"
        "    if isinstance(thing, dict) and 'passed' in thing:\n"
        "        thing = dict(thing, passed=[True] * len(thing['passed']) if isinstance(thing['passed'], list) else True)\n"
        "    if isinstance(thing, dict) and 'raised' in thing:\n"
        "        thing = {key: value for key, value in thing.items() if key != 'raised'}\n"
        "        thing['value'] = 2\n"
        "    return real_dumps(thing, *args, **kwargs)\n"
        "json.dumps = dumps\n"
        "def f(x):\n    return 0\n"),
    "patched builtins (AssertionError and exec)": (
        "import builtins\n"
        "class Nothing(BaseException):\n    pass\n"
        "builtins.AssertionError = Nothing\n"
        "real_exec = builtins.exec\n"
        "builtins.exec = lambda code, namespace=None, *rest: real_exec('pass', namespace)\n"
        "def f(x):\n    return 0\n"),
    "rewritten list of asserts": (
        "import gc\n"
        "for thing in gc.get_objects():\n"
        "    if type(thing) is dict and 'asserts' in thing and type(thing['asserts']) is list:\n"
        "        thing['asserts'][:] = ['pass'] * len(thing['asserts'])\n"
        "def f(x):\n    return 0\n"
        "def check(candidate):\n    pass\n"),
    # A builtin the test's code uses, redefined by the program (`len(f(x)) == ...` would call it).
    "shadowed builtin used by the test": (
        "def sorted(*args, **kwargs):\n    return 'same'\n"
        "def f(x):\n    return [0]\n"),
}


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_in_process_hacks_get_no_reward(attack, spec):
    if attack == "shadowed builtin used by the test":
        spec = dict(spec, asserts=[f"assert sorted(f({x})) == sorted([{x} + 1])" for x in (1, 2, 3)]) \
            if spec["kind"] == "assert" else dict(spec, check="def check(candidate):\n"
                                                            "    assert sorted(candidate([1])) == sorted([2])\n")
    graded = grade(ATTACKS[attack], spec, partial_credit=True)
    if attack == "forged answers via frames":
        # A forged answer is only a value (here 2): it gets what a program returning 2 gets, no more.
        assert graded["passed"] <= grade("def f(x):\n    return 2\n", spec, partial_credit=True)["passed"]
        return
    assert graded["passed"] == [0] and graded["reward"] == [0.0], graded


def test_a_wrong_value_is_wrong_and_a_right_one_right():
    right, wrong = "def f(x):\n    return x + 1\n", "def f(x):\n    return x\n"
    for spec in (ASSERTS, ASSERTS_WITH_REFERENCE, CHECK):
        graded = grade_code_batch([fenced(right), fenced(wrong)], [spec, spec], num_workers=2)
        assert graded["correct"] == [True, False] and graded["in_process_tests"] == [0, 0]


#### The values that come back

@pytest.mark.parametrize("value", [None, True, 0, -3, 2 ** 200, -(2 ** 70), 1.5, float("inf"), 1 + 2j, "",
                                   "é\udc80", b"\x00\xff", [1, [2, (3,)]], (), {1: "a", (2, 3): [4]}, {1, 2},
                                   frozenset({"x"}), {"nested": {"dict": [None, False]}}])
def test_plain_values_round_trip_exactly(value):
    import json
    decoded = decode_value(json.loads(json.dumps(encode_value(value, 10))), 10)
    assert decoded == value and type(decoded) is type(value)


def test_anything_but_plain_values_is_refused():
    class Int(int):
        pass
    for value in (Int(1), type("S", (str,), {})("a"), object(), (x for x in ()), len, [Int(2)], {1: object()}):
        with pytest.raises((TypeError, ValueError)):
            encode_value(value, 10)
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(ValueError):
        encode_value(deep, 64)
    for data in ({"l": [1], "t": [2]}, {"x": 1}, {"s": [{"l": []}]}, {"i": 5}, {"d": [[1]]}, [1, 2],
                 {"c": ["1", 2]}):
        with pytest.raises((TypeError, ValueError)):
            decode_value(data, 10)


@pytest.mark.parametrize("returned", [
    pytest.param("x = []\n    for _ in range(5000):\n        x = [x]\n    return x", id="nested-5000-deep"),
    pytest.param("return (i for i in range(3))", id="generator"),
    pytest.param("return type('L', (list,), {'__eq__': lambda s, o: True})([2])", id="list-subclass"),
    pytest.param("return {2: object()}", id="object-in-dict"),
])
def test_unplain_or_too_deep_return_values_fail(returned):
    spec = {"kind": "assert", "setup": "", "asserts": ["assert f(1) == [2] or f(1) == 2 or f(1)"]}
    graded = grade(f"def f(x):\n    {returned}\n", spec)
    assert graded["reward"] == [0.0]


MALFORMED = {  # bytes written to every descriptor the program may hold, the answer pipe among them
    "deeply nested JSON": "b'[' * 200_000",  # RecursionError out of the old grader's json.loads
    "a huge length header": "b'999999999999999999999999\\n'",
    "a truncated message": "b'10\\n{\"a\": [[[[' + b'[' * 100000",
    "bytes that are not UTF-8": "b'\\xff\\xfe' * 1000",
    "a nested answer in the framing": "b'400011\\n' + b'[' * 400_000",
}


def test_malformed_answers_fail_the_run_and_do_not_crash_the_grader():
    for name, garbage in MALFORMED.items():
        writer = (f"import os\ndef f(x):\n    for fd in range(3, 64):\n        try:\n"
                  f"            os.write(fd, {garbage})\n        except OSError:\n            pass\n    return x + 1\n")
        for spec in (ASSERTS, CHECK):
            graded = grade(writer, spec, partial_credit=True)
            assert graded["reward"] == [0.0], name


#### Per-test deadlines, enforced by the grader

SLOW_BODIES = {
    "ignores SIGALRM": ("import signal, time\ndef f(x):\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                        "    time.sleep({slow})\n    return x + 1\n"),
    "catches the timeout": ("import time\ndef f(x):\n    end = time.monotonic() + {slow}\n"
                            "    while time.monotonic() < end:\n        try:\n            time.sleep(0.05)\n"
                            "        except BaseException:\n            pass\n    return x + 1\n"),
    "blocks SIGALRM": ("import signal, time\ndef f(x):\n    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])\n"
                       "    time.sleep({slow})\n    return x + 1\n"),
}


@pytest.mark.parametrize("body", list(SLOW_BODIES))
def test_a_slow_test_fails_even_when_the_program_defeats_the_timer(body):
    """Each call is 1.6 timeouts long and then right: it used to pass (only the run's wall limit held)."""
    program = SLOW_BODIES[body].format(slow=1.6 * TIMEOUT_S)
    spec = {"kind": "assert", "setup": "", "asserts": ["assert f(1) == 2"]}
    start = time.monotonic()
    graded = grade(program, spec, partial_credit=True)
    seconds = time.monotonic() - start
    assert graded["passed"] == [0]  # timeouts may be False: this unshare can end the run first (see the report)
    assert seconds < reward_code.STARTUP_ALLOWANCE_S + 2 * TIMEOUT_S + 1.0, f"ran {seconds:.1f} s"


def test_the_run_ends_at_the_first_late_test_and_earlier_results_stand():
    program = ("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
               "def f(x):\n    if x == 2:\n        while True:\n            try:\n                time.sleep(1)\n"
               "            except BaseException:\n                pass\n    return x + 1\n")
    start = time.monotonic()
    graded = grade(program, ASSERTS, partial_credit=True)  # f(1) right, f(2) hangs, f(5) never asked
    seconds = time.monotonic() - start
    assert graded["passed"] == [1]
    assert seconds < reward_code.STARTUP_ALLOWANCE_S + 2 * TIMEOUT_S + 1.0, f"ran {seconds:.1f} s"


def test_an_in_process_test_has_the_same_deadline_from_outside():
    # A lambda cannot be sent to the sandbox: without a reference this test runs in the program's
    # interpreter, and the grader still times it.
    spec = {"kind": "assert", "setup": "", "asserts": ["assert apply(lambda v: v + 1, 1) == 2"]}
    honest = grade("def apply(g, x):\n    return g(x)\n", spec)
    assert honest["correct"] == [True] and honest["in_process_tests"] == [1]
    slow = ("import signal, time\ndef apply(g, x):\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
            f"    time.sleep({1.6 * TIMEOUT_S})\n    return g(x)\n")
    graded = grade(slow, spec)
    assert graded["correct"] == [False]


#### Which tests still run in the program's interpreter

def test_the_reference_sends_state_sharing_tests_into_the_program():
    # The test checks that the function sorted its argument in place: a proxied call sorts a copy. The
    # reference run finds that; those tests then run in the program's interpreter, and still fail wrong code.
    spec = {"kind": "assert", "setup": "x = [3, 1, 2]", "asserts": ["assert sort_it(x) is None and x == [1, 2, 3]"],
            "reference": "def sort_it(values):\n    values.sort()\n"}
    right, wrong = "def sort_it(values):\n    values[:] = sorted(values)\n", "def sort_it(values):\n    return None\n"
    graded = grade_code_batch([fenced(right), fenced(wrong)], [spec, spec], num_workers=2, timeout_s=TIMEOUT_S)
    assert graded["correct"] == [True, False] and graded["in_process_tests"] == [1, 1]


def test_partial_credit_counts_each_test():
    graded = grade("def f(x):\n    return 2 if x == 1 else 6 if x == 5 else 0\n", ASSERTS_WITH_REFERENCE,
                   partial_credit=True)
    assert graded["passed"] == [2] and graded["reward"] == [pytest.approx(2 / 3)]
    raising = grade("def f(x):\n    if x == 2:\n        raise ValueError\n    return x + 1\n", ASSERTS,
                    partial_credit=True)
    assert raising["passed"] == [2]
    # A test that expects an exception sees the built-in exception the program raised.
    spec = {"kind": "assert", "setup": "", "asserts": ["try:\n    f(-1)\n    assert False\nexcept ValueError:\n    pass"]}
    assert grade("def f(x):\n    raise ValueError('negative')\n", spec)["correct"] == [True]
    assert grade("def f(x):\n    raise KeyError('negative')\n", spec)["correct"] == [False]


def test_reference_solutions_pass_with_few_tests_in_process():
    humaneval = load_problems(shared_data("code", "humaneval", "test.jsonl"), keep_fields=("canonical_solution",))
    mbpp = load_problems(shared_data("code", "mbpp", "mbpp_revised.jsonl"), keep_fields=("code", "task_id"))
    responses = ([fenced(p["tests"]["prefix"] + p["canonical_solution"]) for p in humaneval] +
                 [fenced(p["code"]) for p in mbpp])
    tests = [p["tests"] for p in humaneval] + [p["tests"] for p in mbpp]
    graded = grade_code_batch(responses, tests, num_workers=2)
    assert all(graded["correct"])
    in_process_humaneval = sum(graded["in_process_tests"][:len(humaneval)])
    in_process_mbpp = sum(graded["in_process_tests"][len(humaneval):])
    print(f"in-process tests: HumanEval {in_process_humaneval} of {len(humaneval)}, "
          f"MBPP {in_process_mbpp} of {sum(graded['total'][len(humaneval):])}")
    assert in_process_humaneval <= 2 and in_process_mbpp <= 30  # README: 0 of 164 and 15 of 2922
    broken = [fenced(p["tests"]["prefix"] + "    return None\n") for p in humaneval] + \
        [fenced(f"def {p['tests']['asserts'][0].split('(')[0].split()[-1]}(*args):\n    return None\n") for p in mbpp]
    graded = grade_code_batch(broken, tests, num_workers=2)
    assert sum(graded["correct"]) <= 3  # a few tests accept None (MBPP: functions that only print)
