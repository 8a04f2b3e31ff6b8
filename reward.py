"""Rule-based rewards for zero RL: extract the final \\boxed{} answer and grade it against the gold answer.

    python reward.py --input rollouts.jsonl --output graded.jsonl       # rows with "response" and "gold"

The reward is the only training signal in zero RL, so every grading mistake is taught to the model:
a false positive rewards a wrong answer, a false negative punishes a right one, and a grader that can
be hung or made to run code is an attack surface for the policy. Every rule below is applied the same
way to the gold answer and to the prediction.

Extraction
  - The answer is the content of the LAST \\boxed{...} (or \\fbox{...}, \\framebox{...}), braces matched:
        "... so \\boxed{\\frac{1}{2}}."  ->  "\\frac{1}{2}"
  - A response cut off inside its last box has no answer, even if an earlier box was complete:
        "\\boxed{3}. Wait, \\boxed{\\frac{1}{2"  ->  None
  - No answer outside a box counts: "The answer is 5." -> None. Rewarding "the last number in the text"
    teaches the policy to skip the format. `unboxed_fallback=True` (--unboxed-fallback) also reads
    "the answer is 5" from responses without a box; it is meant for evaluating other models, never
    for training rewards.

Normalization (string level; then equal strings are equal answers)
  - Dropped: $ and \\( \\) delimiters, \\left \\right \\big, spacing (\\, \\! \\quad ~), \\displaystyle,
    a trailing period ("5." -> "5"); \\dfrac and \\tfrac are \\frac.
  - Text wrappers are unwrapped: "\\text{(B)}" -> "(B)", "\\mathbf{127}" -> "127", "\\text{ or }" -> "or".
  - Units: a trailing \\text{...} word after a number, or a common unit word, is dropped:
    "5.4 \\text{ cents}" == "5.4", "864 \\mbox{ inches}^2" == "864", "12 cm" == "12". A bare single
    letter is never taken for a unit: "\\frac{37}{4} m" keeps its m.
  - Degrees, percent and dollar signs are dropped, with NO rescaling: "90^\\circ" == "90",
    "10\\%" == "10", "\\$18.90" == "18.90"; but "10\\%" != "0.1" and "90^\\circ" != "\\frac{\\pi}{2}".
    Percent as a word is the sign: "28 percent" == "28 pct" == "28\\%" == "28" (and still != "0.28").
  - Thousands separators only in a well-formed whole number: "10,\\!080" == "10080"; "3,2" is a list.
  - Clock times: "4:30 \\text{ p.m.}" == "\\text{4:30 PM}" == "4:30pm"; "4:30 a.m." != "4:30 p.m.".
    A time without a.m./p.m. is on the 24-hour clock, and zero seconds may be written or not:
    "20:34" == "8:34 p.m." == "20:34:00"; "12:05 a.m." == "0:05"; "20:34:05" != "20:34".
  - Mixed numbers with a space: "1 1/2" == "3/2" (never 11/2); "1 3/2" is no number at all.
  - A base subscript is dropped: "52_8" == "52". "x \\in [2,5)" is "[2,5)"; "\\mathbb{R}" is
    "(-\\infty,\\infty)"; "infinity" and "\\inf" are "\\infty"; "\\le", "\\leq" and "<=" are the same.

Equivalence
  1. Numbers are exact rationals: integers, decimals, \\frac{a}{b}, a/b, mixed numbers
     (1\\frac{4}{5} == 9/5, "1 1/2" == 3/2), scientific notation (4.5e33 == 4.5\\times10^{33}). "0.5" == "\\frac12";
     "5" != "500"; "0.5" != "50". No x100 or /100 leniency anywhere.
     Tolerance rule for decimals: a number written with a decimal point stands for every value it is a
     correct rounding of, provided it has at least 3 significant digits: "0.333" == "\\frac13",
     "3.14" == "\\pi", "1.414" == "\\sqrt2"; but "0.33" != "\\frac13" (2 significant digits) and
     "0.334" != "\\frac13" (wrong rounding). Between two decimals the coarser one must be a rounding of
     the finer one: "3.14" == "3.1416". Rounding to a whole number or coarser never counts:
     "1.23e4" != "12345", "3.14e3" != "1000\\pi". Integers and fractions are exact: "420" != "419.99".
  2. Expressions go through a small LaTeX parser of our own into sympy. Constants are compared exactly
     when their difference is rational ("\\frac{1}{2^{99}}" != "\\frac{1}{2^{98}}") and otherwise to 30
     significant digits ("\\sqrt8" == "2\\sqrt2"). Expressions with variables must agree at six fixed
     sample points (relative 1e-9; at least three where both are defined, else simplify(a - b) == 0
     decides): "x^2-1" == "(x+1)(x-1)", "2k+2" != "2(n+1)". The letter i is the imaginary unit and e is
     Euler's number: "3+4i" == "4i+3", "e^{i\\pi}" == "-1".
  3. Tuples, points and intervals are ordered and their brackets must match: "(1,2)" != "(2,1)",
     "[0,1)" != "(0,1]". A bare list matches a parenthesized tuple in order: "3, 4" == "(3, 4)".
     Parentheses around a single answer are grouping: "(113)" == "113".
  4. Sets, multi-answer lists and interval unions are unordered, and every answer is required, with no
     extras: "3, 2" == "2, 3", "\\{1,2\\}" == "\\{2,1\\}", "3 \\text{ or } 5" != "3", "3, 5" != "3, 5, 7".
     "or" and "and" separate answers with or without spaces: "(11,7)or(7,11)" == "(7,11), (11,7)".
     Repeats: a set (and an interval union, and the answers of \\pm) is its distinct elements,
     "\\{1,1,2\\}" == "\\{1,2\\}"; a bare answer list keeps its repeats, since they can be meant (a double
     root, the sides of an isosceles triangle): "1, 1, 2" != "1, 2". A list against a set is a set.
  5. \\pm gives both answers: "1 \\pm \\sqrt{2}" == "1+\\sqrt2, 1-\\sqrt2".
  6. Equations: an assignment to one variable compares its right side: "x=5" == "5",
     "y = 2x+3" == "2x+3", "f(x)=2x" == "2x"; but "x=5" != "y=5". Other equations are equal when one is
     a nonzero multiple of the other: "x+y=1" == "2x+2y=2".
     A label may name any single quantity: "x_1 = 4", "m_{\\max} = 3", "P(A) = \\frac13", "|AB| = 1",
     "AB = 1", "\\angle ABC = 90", "\\frac{dx}{dt} = kx" all equal their value, and "(p,q)=(3,2)" ==
     "(3,2)". An expression on the left is no label: "a+b=7" is an equation, equal only to equations, so "a+b=7" != "7".
     Chains: every link must hold, and the answer is the last exact member: "x = 3 + 8 = 11" == "11",
     "3+8=11" == "11", but "3 + 3 = 2" != "2". An approximation (\\approx, \\sim before a number) must be a
     correct rounding at its last digit, and the answer is the value before it:
     "\\frac{\\sqrt3}{3} \\approx 0.577" == "\\frac{\\sqrt3}{3}" (and == "0.577" by rule 1), while
     "\\frac{\\sqrt3}{3} \\approx 0.5" is wrong; "x \\approx 0.577" is the decimal 0.577.
  7. Inequalities in one variable are intervals: "x \\ge 5" == "[5, \\infty)", "1 < x \\le 3" == "(1,3]",
     also with a rational coefficient, a sign or an offset: "-x > -1" == "x < 1", "2x \\ge 2" == "[1,\\infty)",
     "-1 < 2x+1 \\le 3" == "(-1,1]"; but "2x > 2" != "x \\ge 1".
     Other inequalities are equal when one is a positive multiple of the other: "x+y>2" == "2<x+y".
  8. Matrices and vectors (pmatrix, bmatrix, ...): same shape, entries equal in order. Matrix arithmetic
     (sums, products, scalar multiples, integer powers up to MAX_MATRIX_POWER, ^{-1}, ^T) is evaluated
     on matrices of at most MAX_MATRIX_ENTRIES entries: "2\\begin{pmatrix}1\\\\2\\end{pmatrix}" ==
     "\\begin{pmatrix}2\\\\4\\end{pmatrix}"; larger ones are refused (wrong unless written identically).
     \\sum and \\prod with integer bounds are evaluated within MAX_SERIES_TERMS terms (nested ones counted):
     "\\sum_{k=1}^{10} k" == "55"; others are compared structurally (up to the index's name):
     "\\sum_{k=1}^{n} k" == "\\sum_{j=1}^{n} j" but != "\\frac{n(n+1)}{2}", and "\\sum_{k=1}^{10^{100}} k" is
     never summed.
  9. Answers made only of letters are text, compared case-insensitively: "\\text{Even}" == "even".
     Multiple-choice letters: "(B)" == "B" == "\\text{(B)} 12" when the other side is a single letter A-E.
 10. Infinity: "\\infty" == "+\\infty" != "-\\infty".

Safety
  - Nothing here calls eval, exec, sympify or parse_expr on any text: our parser builds sympy objects
    directly, so "__import__('os').system(...)" is just a parse error.
  - Size guards before sympy: answers over MAX_ANSWER_CHARS characters are wrong; nesting deeper than
    MAX_NESTING_DEPTH, integer powers over MAX_POWER_BITS bits ("9^{9^{9}}"), factorials of more than
    MAX_FACTORIAL ("100000!") and exponents over MAX_SYMBOLIC_EXPONENT on non-numbers are refused.
  - Comparisons that need sympy run in worker processes under a hard deadline (timeout, default
    DEFAULT_TIMEOUT_SECONDS): a worker that overruns is killed (SIGKILL) and replaced. A timed-out
    comparison counts as incorrect and is counted in the "timeouts" of grade_batch. Cheap comparisons
    (equal strings, numbers, tuples of numbers) are decided in the calling process without a worker.
    Workers come from a forkserver (or spawn), never fork, so as with any such multiprocessing code a
    script that grades needs the `if __name__ == "__main__":` guard.

Reward schemes (reward_scheme, --reward-scheme)
  correct   1.0 if the answer is right, else 0.0 (SimpleRL-Zoo).
  simplerl  +1.0 right and boxed, -0.5 boxed but wrong, -1.0 no boxed answer (SimpleRL blog).
  format    format-gated: 1.0 right and well formatted, 0.0 well formatted but wrong, -1.0 badly
            formatted. Well formatted: at least one closed box (and at most MAX_BOXES_CHECKED), every
            one equivalent to the last: "\\boxed{5}, i.e. \\boxed{5.0}" is fine, hedging with
            "\\boxed{3} or \\boxed{5}" is not. Blanks drawn as boxes ("\\boxed{\\phantom{2}}") are ignored.
A truncated response (finish reason "length") is graded like any other: if the cut fell before its
last box was closed it has no answer and gets the no-answer reward (0.0, -1.0, -1.0); if its last box
was complete, that box is graded.
"""

import argparse
import atexit
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import threading
import time
from collections import deque, namedtuple
from fractions import Fraction
from functools import lru_cache

#### Limits and settings

MAX_ANSWER_CHARS = 1000  # longest real gold answer in our eval sets is ~210 characters
MAX_NESTING_DEPTH = 50  # brackets and braces; deeper input is hostile, and recursion has limits
MAX_POWER_BITS = 100_000  # 2^{100000} is fine, 9^{9^{9}} (1.2 billion bits) is not
MAX_SYMBOLIC_EXPONENT = 10_000  # (x+1)^{10^6} would take sympy forever to expand
MAX_FACTORIAL = 1000
MAX_SERIES_TERMS = 1000  # parses of \sum/\prod bodies per answer, nested ones included (n terms cost n + 1)
MAX_MATRIX_ENTRIES = 100  # matrix arithmetic on matrices up to 10x10
MAX_MATRIX_POWER = 64
MAX_BOXES_CHECKED = 20  # for the format check; more boxes than this is not a well-formatted answer
DEFAULT_TIMEOUT_SECONDS = 5.0  # per comparison that needs sympy; most take a few milliseconds
WORKER_START_TIMEOUT_SECONDS = 60.0

REWARD_SCHEMES = ("correct", "simplerl", "format")
GRADERS = ("zerorl", "math-verify")


class _NeedsSympy(Exception):
    """Raised by the in-process fast path when only sympy (in a worker) can decide."""


class _TooLarge(Exception):
    """Raised by the size guards: the input would make sympy hang or exhaust memory."""


class _ParseError(Exception):
    """Raised by the LaTeX parser on input it does not understand."""


#### Extraction

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox|framebox)\s*\{")
_BRACE = re.compile(r"[{}]")


def _closing_brace(text, open_position):
    """Index of the brace that closes the one at open_position, or None if it is never closed."""
    depth = 0
    for match in _BRACE.finditer(text, open_position):
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return match.start()
    return None


def extract_boxed(text):
    """The content of the last \\boxed{...} (or \\fbox, \\framebox) in `text`; None if there is none
    or if the response was cut off inside it."""
    boxes = list(_BOX_COMMAND.finditer(text))
    if not boxes:
        return None
    start = boxes[-1].end()  # just after the box's opening brace
    close = _closing_brace(text, start - 1)
    return None if close is None else text[start:close]


_ANSWER_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*([^\n]+)", re.IGNORECASE)


def extract_answer(response, unboxed_fallback=False):
    """(answer, boxed): the last box's content. Only with unboxed_fallback may a response without any
    box answer with "the answer is ..." instead; that is for evaluating models that do not box."""
    boxed = extract_boxed(response)
    if boxed is not None or not unboxed_fallback or _BOX_COMMAND.search(response):
        return boxed, boxed is not None
    phrases = _ANSWER_PHRASE.findall(response)
    if not phrases:
        return None, False
    answer = re.split(r"\.\s|\.$", phrases[-1].strip())[0]  # up to the end of the sentence
    return answer.strip().strip("$").strip(), False


_LAYOUT_BOX = re.compile(r"\s*(?:\\phantom\s*\{[^{}]*\}\s*)*")  # "\boxed{\phantom{2}}" draws a blank


def _all_boxed(response):
    """The contents of every box in the response, except blanks drawn with boxes ("\\boxed{}",
    "\\boxed{\\phantom{2}}"); None if a box is unclosed or there are too many."""
    starts = list(_BOX_COMMAND.finditer(response))
    if len(starts) > MAX_BOXES_CHECKED:
        return None
    contents = []
    for start in starts:
        close = _closing_brace(response, start.end() - 1)
        if close is None:
            return None
        content = response[start.end():close]
        if not _LAYOUT_BOX.fullmatch(content):
            contents.append(content)
    return contents


def _well_formatted(responses, timeout, num_workers):
    """Per response: at least one closed box, and every box equivalent to the last one (no hedging)."""
    boxes = [_all_boxed(response) for response in responses]
    formatted = [bool(contents) for contents in boxes]
    owners, earlier, last = [], [], []
    for index, contents in enumerate(boxes):
        for content in sorted(set((contents or [])[:-1])):  # each distinct earlier box vs. the last one
            owners.append(index)
            earlier.append(content)
            last.append(contents[-1])
    same, _ = _judge(earlier, last, timeout, num_workers)
    for index, agrees in zip(owners, same):
        formatted[index] = formatted[index] and agrees
    return formatted


#### Normalization (string level)

_UNICODE_SYMBOLS = (("\u2212", "-"), ("\u2013", "-"), ("\u03c0", "\\pi "), ("\u221e", "\\infty "),
                    ("\u221a", "\\sqrt"), ("\u00b0", "^\\circ"), ("\u2264", "\\le "), ("\u2265", "\\ge "),
                    ("\u00d7", "\\times "), ("\u00b7", "\\cdot "), ("\u00f7", "\\div "), ("\u2260", "\\neq "),
                    ("\u2248", "\\approx "))
_CLOCK_TIME = re.compile(r"(?<![\d:.])(\d{1,2}):(\d{2})(?::(\d{2}))?(?![\d:])"
                         r"(?:\s*(\\(?:text|mbox|mathrm)\s*\{\s*)?([aApP])\.?\s*[mM]\.?(?(4)\s*\}))?")
_MIXED_NUMBER_WITH_SPACE = re.compile(r"(?<![\d.])([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)(?![\d.])")
_DISPLAY_DELIMITERS = re.compile(r"(?<!\\)\\[()\[\]]")  # \( \) \[ \], but not a row break "\\" before "["
_TEXT_WRAPPER = re.compile(r"\\(?:text(?:bf|it|rm|normal|sf|tt)?|math(?:rm|bf|it|sf|tt|normal)|mbox|hbox"
                           r"|boxed|fbox|framebox|operatorname\*?|boldsymbol|bm|emph)\s*\{")
_TRAILING_TEXT = re.compile(r"\\(?:text|mbox|mathrm|textrm|rm)\s*\{([^{}]*)\}(?:\s*\^\s*\{?\s*[23]\s*\}?)?"
                            r"\s*\.?\s*$")
_FRACTION_VARIANTS = re.compile(r"\\[dtc]frac(?![a-zA-Z])")
_INVISIBLE_DELIMITERS = re.compile(r"\\(?:left|right)\s*\.")
_SIZING_COMMANDS = re.compile(r"\\(?:left|right|[bB]igg?[lr]?|displaystyle|textstyle|limits)(?![a-zA-Z])")
_THIN_SPACES = re.compile(r"\s*(?<!\\)\\[,!;:]\s*")
_WIDE_SPACES = re.compile(r"\\q?quad(?![a-zA-Z])|~|(?<!\\)\\ ")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ(?![a-zA-Z])|\\degree(?![a-zA-Z])")
_PERCENT = re.compile(r"\\?%|(?<=[\d}.])\s*(?:percent|per\s?cent|pct)(?![a-zA-Z])\.?", re.IGNORECASE)
_RELATION_SPELLINGS = (
    (re.compile(r"\\leqslant|\\leq(?![a-zA-Z])|\\le(?![a-zA-Z])|<="), r"\\le "),
    (re.compile(r"\\geqslant|\\geq(?![a-zA-Z])|\\ge(?![a-zA-Z])|>="), r"\\ge "),
    (re.compile(r"\\lt(?![a-zA-Z])"), "<"),
    (re.compile(r"\\gt(?![a-zA-Z])"), ">"),
    (re.compile(r"\\neq(?![a-zA-Z])|\\ne(?![a-zA-Z])|!="), r"\\neq "),
    (re.compile(r"\\approx(?![a-zA-Z])|\\sim(?:eq)?(?![a-zA-Z])(?=\s*[-+]?[\d.])"), r"\\approx "),
)
_INFINITY_SPELLINGS = re.compile(r"\\infinity|\\inf(?![a-zA-Z])|(?<!\\)\binfinity\b", re.IGNORECASE)
_EMPTY_SET = re.compile(r"\\varnothing|\\\{\s*\\\}")
_REAL_LINE = re.compile(r"\\mathbb\s*\{?\s*R\s*\}?")
_UNIT_WORDS = (r"units?|cm|mm|km|meters?|metres?|inch(?:es)?|feet|foot|ft|yards?|miles?|mph|degrees?"
               r"|dollars?|cents?|hours?|hrs?|minutes?|mins|seconds?|secs|days?|weeks?|months?|years?"
               r"|pounds?|lbs?|ounces?|oz|gallons?|liters?|litres?|grams?|kg|kilograms?|calories|people"
               r"|students")
_TRAILING_UNIT_WORD = re.compile(r"(?<=[\d}).\s])\s*(?:square\s+|sq\.?\s*|cubic\s+)?(?:" + _UNIT_WORDS +
                                 r")(?:\s*\^\s*\{?\s*[23]\s*\}?)?\s*$")
_MEMBERSHIP_PREFIX = re.compile(r"^[a-zA-Z](?:_\{?\w+\}?)?\s*\\in(?![a-zA-Z])\s*")
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_COMMAND_BEFORE_LETTER = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])")
_BASE_SUBSCRIPT = re.compile(r"(\d[0-9A-Z]*)_\{?(\d+)\}?")


def _unwrap_text_commands(text):
    """Replace \\text{content} (and \\mathbf{...}, \\boxed{...}, ...) by content, in one linear pass."""
    output, kept_braces = [], []  # kept_braces: for each open brace, whether its "}" is kept
    position = 0
    while position < len(text):
        wrapper = _TEXT_WRAPPER.match(text, position)
        if wrapper:
            kept_braces.append(False)
            position = wrapper.end()
            continue
        char = text[position]
        if char == "{":
            kept_braces.append(True)
        elif char == "}" and kept_braces and not kept_braces.pop():
            position += 1
            continue
        output.append(char)
        position += 1
    return "".join(output)


def _clock_time_24_hours(match):
    """ "8:34 p.m." -> "20:34", "20:34:00" -> "20:34", "12:05 am" -> "0:05"; other text is kept."""
    hours, minutes, seconds, suffix = int(match.group(1)), int(match.group(2)), match.group(3), match.group(5)
    if minutes > 59 or (seconds and int(seconds) > 59) or hours > (12 if suffix else 23) or (suffix and not hours):
        return match.group()
    if suffix:
        hours = hours % 12 + (12 if suffix.lower() == "p" else 0)
    return f"{hours}:{minutes:02d}" + (f":{seconds}" if seconds and seconds != "00" else "") + " "


def _mixed_number_with_space(match):
    """ "1 1/2" -> "1\\frac{1}{2}" (3/2, never 11/2); "1 3/2" is no number and stays unreadable."""
    sign, whole, numerator, denominator = match.groups()
    if 0 < int(numerator) < int(denominator):
        return f"{sign}{whole}\\frac{{{numerator}}}{{{denominator}}}"
    return f"{sign}{whole}\x01{numerator}/{denominator}"


def _strip_trailing_text_unit(text):
    """ "5.4 \\text{ cents}" -> "5.4": a trailing text word after something number-like is a unit."""
    match = _TRAILING_TEXT.search(text)
    if match and re.fullmatch(r"[\sa-zA-Z.~]*[a-zA-Z][\sa-zA-Z.~]*", match.group(1)):
        before = text[:match.start()].rstrip()
        if before and before[-1] in "0123456789}).":
            return before
    return text


def _clean(answer):
    """String-level normalization. Spaces are kept: they separate words such as "or" in lists."""
    text = str(answer)
    for symbol, latex in _UNICODE_SYMBOLS:
        text = text.replace(symbol, latex)
    text = _CLOCK_TIME.sub(_clock_time_24_hours, text)
    text = _DISPLAY_DELIMITERS.sub(" ", text.replace("\n", " "))
    text = text.replace("\\$", " ").replace("$", " ")  # currency, then math delimiters
    text = _strip_trailing_text_unit(text)  # before unwrapping, while units are still marked as text
    text = _unwrap_text_commands(text)
    text = _FRACTION_VARIANTS.sub(r"\\frac", text)
    text = _INVISIBLE_DELIMITERS.sub(" ", text)
    text = _SIZING_COMMANDS.sub("", text)
    text = _THIN_SPACES.sub("", text)  # "10,\!080" -> "10,080"
    text = _WIDE_SPACES.sub(" ", text)
    text = _DEGREES.sub("", text)
    text = _PERCENT.sub("", text)
    text = text.replace("{,}", ",")
    for spelling, canonical in _RELATION_SPELLINGS:
        text = spelling.sub(canonical, text)
    text = _INFINITY_SPELLINGS.sub(r"\\infty ", text)
    text = _EMPTY_SET.sub(r"\\emptyset ", text)
    text = _REAL_LINE.sub(r"(-\\infty,\\infty)", text)
    text = _TRAILING_UNIT_WORD.sub("", text.strip())
    text = text.strip().rstrip(".").strip()
    text = _MIXED_NUMBER_WITH_SPACE.sub(_mixed_number_with_space, text)
    text = _MEMBERSHIP_PREFIX.sub("", text)
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text


def _canonical(text):
    """A cleaned answer without spaces (one is kept after a command before a letter: "\\sin x")."""
    text = _COMMAND_BEFORE_LETTER.sub("\\1\x00", text)
    text = re.sub(r"\s+", "", text).replace("\x00", " ").rstrip(".")
    base_number = _BASE_SUBSCRIPT.fullmatch(text)
    return base_number.group(1) if base_number else text


def normalize_answer(answer):
    """The canonical string form of an answer: two answers with equal forms are equal."""
    return _canonical(_clean(answer))


#### Numbers without sympy: exact rationals, and the tolerance rule for decimals

# value: a Fraction (or +-inf). resolution: 10^-places for a number written with a decimal point,
# None for an exact one. significant_digits: of the written decimal.
Number = namedtuple("Number", "value resolution significant_digits")

_DECIMAL = r"(?:\d+\.?\d*|\.\d+)"
_PLAIN_NUMBER = re.compile(r"([+-]?)(\d*)\.?(\d*)")
_SCIENTIFIC = re.compile(r"([+-]?" + _DECIMAL + r")(?:[eE]([+-]?\d+)|(?:\\times|\\cdot|\*)10\^(?:\{([+-]?\d+)\}|(\d)))")
_POWER_OF_TEN = re.compile(r"([+-]?)10\^(?:\{([+-]?\d+)\}|(\d))")
_FRACTION_ARGUMENT = r"(?:\{([+-]?" + _DECIMAL + r")\}|(\d))"
_LATEX_FRACTION = re.compile(r"([+-]?)\\frac" + _FRACTION_ARGUMENT + _FRACTION_ARGUMENT)
_SLASH_FRACTION = re.compile(r"([+-]?" + _DECIMAL + r")/([+-]?" + _DECIMAL + r")")
_MIXED_NUMBER = re.compile(r"([+-]?)(\d+)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))")
_INFINITY = re.compile(r"([+-]?)\\infty")
_MAX_DECIMAL_EXPONENT = 1000


def _decimal_number(text):
    """A Number for "12", "-0.50", ".35625"; decimals remember their rounding resolution."""
    match = _PLAIN_NUMBER.fullmatch(text)
    if not match or not (match.group(2) or match.group(3)):
        return None
    value = Fraction(text)
    places = len(match.group(3))
    if places == 0:
        return Number(value, None, None)
    significant = len((match.group(2) + match.group(3)).lstrip("0"))
    return Number(value, Fraction(1, 10 ** places), significant)


def _parse_number(text):
    """A Number for a leaf that is a plain number, fraction, mixed number or in scientific notation;
    None for anything else (then sympy decides)."""
    number = _decimal_number(text)
    if number is not None:
        return number
    match = _SCIENTIFIC.fullmatch(text)
    if match:
        mantissa = _decimal_number(match.group(1))
        exponent = int(match.group(2) or match.group(3) or match.group(4))
        if mantissa is None or abs(exponent) > _MAX_DECIMAL_EXPONENT:
            return None
        scale = Fraction(10) ** exponent
        resolution = None if mantissa.resolution is None else mantissa.resolution * scale
        return Number(mantissa.value * scale, resolution, mantissa.significant_digits)
    match = _POWER_OF_TEN.fullmatch(text)
    if match:
        exponent = int(match.group(2) or match.group(3))
        if abs(exponent) > _MAX_DECIMAL_EXPONENT:
            return None
        return Number((-1 if match.group(1) == "-" else 1) * Fraction(10) ** exponent, None, None)
    match = _MIXED_NUMBER.fullmatch(text)
    if match:
        whole, numerator = int(match.group(2)), int(match.group(3) or match.group(4))
        denominator = int(match.group(5) or match.group(6))
        if 0 < numerator < denominator:  # "1\frac{4}{5}" is 1 4/5, a mixed number
            value = whole + Fraction(numerator, denominator)
            return Number(-value if match.group(1) == "-" else value, None, None)
        return None
    match = _LATEX_FRACTION.fullmatch(text)
    if match:
        numerator = Fraction(match.group(2) or match.group(3))
        denominator = Fraction(match.group(4) or match.group(5))
        if denominator == 0:
            return None
        return Number((-1 if match.group(1) == "-" else 1) * numerator / denominator, None, None)
    match = _SLASH_FRACTION.fullmatch(text)
    if match:
        denominator = Fraction(match.group(2))
        return None if denominator == 0 else Number(Fraction(match.group(1)) / denominator, None, None)
    match = _INFINITY.fullmatch(text)
    if match:
        return Number(float("-inf") if match.group(1) == "-" else float("inf"), None, None)
    return None


def _numbers_equal(first, second):
    """Exact equality, or the tolerance rule: a decimal with at least 3 significant digits, rounded
    after its decimal point, equals any value it is a correct rounding of (between two decimals, the
    coarser must round the finer)."""
    if first.value == second.value:
        return True
    if float("inf") in (abs(first.value), abs(second.value)):
        return False
    decimals = [number for number in (first, second) if number.resolution is not None]
    if not decimals:
        return False
    coarse = max(decimals, key=lambda number: number.resolution)
    other = second if coarse is first else first
    if coarse.significant_digits < 3 or coarse.resolution >= 1:  # "0.3", "1.23e4": no tolerance
        return False
    return abs(coarse.value - other.value) <= coarse.resolution / 2


#### Answer structure: lists, sets, tuples, intervals, matrices (string level)

# A parsed answer is one of:
#   ("leaf", text)                                  a single expression, canonical string
#   ("ordered", open, close, [items], variable)    tuples, points, intervals: "(1,2]"; variable is set
#                                                   when it came from an inequality "1 < x <= 2"
#   ("unordered", kind, [items])                   kind: "list" ("1, 2"), "set" ("\{1,2\}"),
#                                                   "union" ("(0,1)\cup(2,3)"), "pm" ("1 \pm 2")
#   ("matrix", [[items], ...])

_WORD_SEPARATOR = re.compile(r"\s+(?:or|and)\s+")
_GLUED_WORD_SEPARATOR = re.compile(r"(?:or|and)(?![a-zA-Z])")  # "(11,7)or(7,11)", after a non-letter
_MATRIX = re.compile(r"\\begin\{([pbBvV]?matrix|smallmatrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", re.DOTALL)
_VARIABLE = re.compile(r"(?:[a-zA-Z]|\\(?:alpha|beta|gamma|theta|lambda|mu|phi|omega|tau|sigma|rho))"
                       r"(?:_\{?[a-zA-Z0-9]+\}?)?")
# A label names the quantity an answer is about: "x", "x_1", "m_{\max}", "f(x)", "P(A)", "AB", "|AB|",
# "\angle ABC", "\overline{AB}", "\frac{dx}{dt}". "(p,q)" labels a tuple. "a+b" is no label: it is an expression.
_NAME = (r"(?:[a-zA-Z]|\\(?:alpha|beta|gamma|delta|epsilon|varepsilon|theta|lambda|mu|nu|xi|rho|sigma|tau|phi"
         r"|varphi|chi|psi|omega|zeta|eta|iota|kappa|upsilon|vartheta|ell|Gamma|Delta|Theta|Lambda|Xi|Sigma|Phi|Psi"
         r"|Omega)(?![a-zA-Z]))(?:_(?:\{[^{}=]*\}|[a-zA-Z0-9]))?(?:'|\^\{?\\prime\}?)*")
_LABEL = (r"(?:" + _NAME + r"(?:\([^()=]*\))?|\|[^|=]+\||[A-Z]{2,4}|\\overline\{[A-Z]+\}"
          r"|\\frac\{d(?:\^\{?\d\}?)?\s*[a-zA-Z][^{}=]*\}\{d\s*[a-zA-Z](?:\^\{?\d\}?)?\}"  # dy/dx
          r"|(?:m\s*)?\\angle\s*[A-Z][A-Z_{}0-9]*)")
_TUPLE_LABEL = r"\(\s*" + _NAME + r"(?:\s*,\s*" + _NAME + r")+\s*\)"
_STRUCTURE_ASSIGNMENT = re.compile(r"(?:" + _LABEL + "|" + _TUPLE_LABEL + r")\s*=\s*([^=]+)")
_INEQUALITY = re.compile(r"(\\le(?![a-zA-Z])|\\ge(?![a-zA-Z])|<|>)")
_LOWER_THAN = {"<": ")", "\\le": "]"}  # x < a  ->  (-inf, a)
_GREATER_THAN = {">": "(", "\\ge": "["}  # x > a  ->  (a, inf)


def _nesting_depth(text):
    depth = deepest = 0
    for char in text:
        if char in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]}":
            depth -= 1
    return deepest


def _split_top_level(text):
    """Split at commas, semicolons, "or", "and" and \\cup outside all brackets.
    Returns (parts, separators); any bracket type opens and closes, since "[0,1)" is balanced."""
    parts, separators, depth, start, position = [], [], 0, 0, 0
    while position < len(text):
        char = text[position]
        cut = None
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            if char in ",;":
                cut = (position + 1, "comma")
            elif text.startswith("\\cup", position) and not text[position + 4:position + 5].isalpha():
                cut = (position + 4, "cup")
            elif char.isspace():
                word = _WORD_SEPARATOR.match(text, position)
                cut = (word.end(), "word") if word else None
            elif char in "oa" and position and not (text[position - 1].isalpha() or text[position - 1] == "\\"):
                word = _GLUED_WORD_SEPARATOR.match(text, position)
                cut = (word.end(), "word") if word else None
        if cut:
            parts.append(text[start:position])
            separators.append(cut[1])
            start = position = cut[0]
        else:
            position += 1
    parts.append(text[start:])
    kept = [(part.strip(), separator) for part, separator in zip(parts, [None] + separators) if part.strip()]
    return [part for part, _ in kept], [separator for _, separator in kept[1:]]


def _closes_at_end(text, open_position):
    """True when the bracket at open_position is closed by the last character (and not before)."""
    depth = 0
    for position in range(open_position, len(text)):
        if text[position] in "([{":
            depth += 1
        elif text[position] in ")]}":
            depth -= 1
            if depth == 0:
                return position == len(text) - 1
    return False


_LINEAR_SIDE = re.compile(r"([+-]?)(\d+(?:\.\d+)?|\\frac\{\d+\}\{\d+\}|\\frac\d\d)?(?:\\cdot|\*)?"
                          r"(" + _VARIABLE.pattern + r")(?:/(\d+))?(?:([+-])(\d+(?:\.\d+)?))?")
_MIRROR = {"(": ")", "[": "]", ")": "(", "]": "["}


def _linear_side(text):
    """(variable, a, b) when text is a*variable + b with rational a != 0, b: "-x", "2x", "3x-1", "x/2"."""
    if _VARIABLE.fullmatch(text):
        return text, Fraction(1), Fraction(0)
    match = _LINEAR_SIDE.fullmatch(text)
    if not match:
        return None
    sign, coefficient, variable, divisor, constant_sign, constant = match.groups()
    scale = _parse_number(coefficient).value if coefficient else Fraction(1)
    scale = (-scale if sign == "-" else scale) / (int(divisor) if divisor else 1)
    offset = Fraction(constant or 0) * (-1 if constant_sign == "-" else 1)
    return (variable, scale, offset) if scale else None


def _solved_bound(bound, scale, offset):
    """(bound - offset) / scale as answer text: exact for numbers, else a \\frac for sympy to read."""
    if scale == 1 and offset == 0:
        return bound
    if bound in ("\\infty", "-\\infty"):
        return bound if scale > 0 else ("-\\infty" if bound == "\\infty" else "\\infty")
    number = _parse_number(bound)
    if number is not None and abs(number.value) != float("inf"):
        value = (number.value - offset) / scale
        return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    return f"\\frac{{({bound})-({_fraction_text(offset)})}}{{{_fraction_text(scale)}}}"


def _fraction_text(value):
    return str(value.numerator) if value.denominator == 1 else f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def _interval_in_variable(opening, low, high, closing, linear):
    """The interval for a*x + b, turned into the interval for x (a < 0 turns it around)."""
    variable, scale, offset = linear
    low, high = _solved_bound(low, scale, offset), _solved_bound(high, scale, offset)
    if scale < 0:
        opening, low, high, closing = _MIRROR[closing], high, low, _MIRROR[opening]
    return ("ordered", opening, closing, [("leaf", low), ("leaf", high)], variable)


def _inequality_as_interval(leaf):
    """ "x\\ge5" -> ("ordered", "[", ")", [5, \\infty], "x"); "-2x>-4" is "x<2"; None when the leaf is not
    such an inequality in one variable."""
    parts = [part.strip() for part in _INEQUALITY.split(leaf)]
    if len(parts) == 3:
        left, relation, right = parts
        linear = _linear_side(left) if right else None
        if linear:
            bound = right
        else:
            linear = _linear_side(right) if left else None
            if not linear:
                return None
            bound = left
            relation = {"<": ">", ">": "<", "\\le": "\\ge", "\\ge": "\\le"}[relation]  # "5 < x" is "x > 5"
        if relation in _LOWER_THAN:
            return _interval_in_variable("(", "-\\infty", bound, _LOWER_THAN[relation], linear)
        return _interval_in_variable(_GREATER_THAN[relation], bound, "\\infty", ")", linear)
    linear = _linear_side(parts[2]) if len(parts) == 5 else None
    if linear and parts[0] and parts[4]:
        low, first, _, second, high = parts
        if first in _LOWER_THAN and second in _LOWER_THAN:  # "1 < x <= 3"
            opening = "(" if first == "<" else "["
            return _interval_in_variable(opening, low, high, _LOWER_THAN[second], linear)
        if first in _GREATER_THAN and second in _GREATER_THAN:  # "3 >= x > 1"
            closing = ")" if first == ">" else "]"
            return _interval_in_variable(_GREATER_THAN[second], high, low, closing, linear)
    return None


def _expand_plus_minus(leaf):
    """ "1\\pm\\sqrt2" -> ["1+\\sqrt2", "1-\\sqrt2"] (up to two signs, so at most four answers)."""
    answers = [leaf]
    for _ in range(2):
        expanded = []
        for answer in answers:
            match = re.search(r"\\(pm|mp)(?![a-zA-Z])", answer)
            if not match:
                expanded.append(answer)
                continue
            signs = ("+", "-") if match.group(1) == "pm" else ("-", "+")
            expanded += [answer[:match.start()] + sign + answer[match.end():] for sign in signs]
        answers = expanded
    return answers


def _parse_items(parts, depth):
    """Parse list items; "\\pm" answers inside a list or set are spliced into it."""
    items = []
    for part in parts:
        item = _parse_structure(part, depth + 1)
        items += item[2] if item[0] == "unordered" and item[1] == "pm" else [item]
    return items


def _parse_structure(text, depth=0):
    """The structure of a cleaned answer: see the table above."""
    if depth > MAX_NESTING_DEPTH:
        raise _TooLarge("answer nested too deeply")
    text = text.strip().rstrip(".").strip()
    matrix = _MATRIX.fullmatch(text)
    if matrix and "\\begin{" not in matrix.group(2) and "\\end{" not in matrix.group(2):  # one matrix
        rows = [row for row in re.split(r"\\\\", matrix.group(2)) if row.strip()]
        return ("matrix", [[_parse_structure(cell, depth + 1) for cell in row.split("&")] for row in rows])
    parts, separators = _split_top_level(text)
    if len(parts) > 1:
        kind = "union" if all(separator == "cup" for separator in separators) else "list"
        return ("unordered", kind, _parse_items(parts, depth))
    text = parts[0] if parts else ""
    assignment = _STRUCTURE_ASSIGNMENT.fullmatch(text)  # "v = (1, 2)", "A = \begin{pmatrix}...": the value
    if assignment:
        value = _parse_structure(assignment.group(1), depth + 1)
        if value[0] != "leaf":
            return value
    if text.startswith("\\{") and text.endswith("\\}") and _closes_at_end(text, 1):
        return ("unordered", "set", _parse_items(_split_top_level(text[2:-2])[0], depth))
    if text and text[0] in "([{" and text[-1] in ")]}" and _closes_at_end(text, 0):
        inner_parts, _ = _split_top_level(text[1:-1])
        if len(inner_parts) == 1 or text[0] == "{":  # "(113)", "{5}": grouping, not a tuple
            return _parse_structure(text[1:-1], depth + 1)
        return ("ordered", text[0], text[-1], [_parse_structure(part, depth + 1) for part in inner_parts], None)
    leaf = _canonical(text)
    interval = _inequality_as_interval(leaf)
    if interval:
        return interval
    answers = _expand_plus_minus(leaf)
    if len(answers) > 1:
        return ("unordered", "pm", [("leaf", answer) for answer in answers])
    return ("leaf", leaf)


#### Comparison: the same code runs in the calling process (use_sympy=False) and in the workers

_ASSIGNMENT = re.compile(r"(" + _LABEL + r")=([^=]+)")
_CHOICE_LETTER = re.compile(r"\(?([A-E])\)?|\(([A-E])\)(?!.*\([A-E]\)).+")  # "(C) 25", but not "(A)(B)"
_WORDS = re.compile(r"[a-zA-Z]{2,}")


def _compare_answers(prediction, gold, use_sympy):
    """True when prediction and gold are equivalent. Without use_sympy, raises _NeedsSympy when only
    sympy can decide. Size guards make hostile input simply unequal."""
    if prediction is None or gold is None:
        return False
    if len(prediction) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    prediction, gold = _clean(prediction), _clean(gold)
    if _canonical(prediction) == _canonical(gold):
        return True
    if max(_nesting_depth(prediction), _nesting_depth(gold)) > MAX_NESTING_DEPTH:
        return False
    try:
        return _structures_equal(_parse_structure(prediction), _parse_structure(gold), use_sympy)
    except _TooLarge:
        return False


def _as_ordered(structure):
    """A bare list "3, 4" can stand for the tuple "(3, 4)"; other structures only for themselves."""
    if structure[0] == "ordered":
        return structure
    if structure[0] == "unordered" and structure[1] == "list":
        return ("ordered", "(", ")", structure[2], None)
    return None


def _structures_equal(first, second, use_sympy):
    if first[0] == "leaf" and second[0] == "leaf":
        return _leaves_equal(first[1], second[1], use_sympy)
    if first[0] == "ordered" or second[0] == "ordered":
        first, second = _as_ordered(first), _as_ordered(second)
        if first is None or second is None or first[1:3] != second[1:3] or len(first[3]) != len(second[3]):
            return False
        if first[4] and second[4] and first[4] != second[4]:  # "x > 5" is not "y > 5"
            return False
        return all(_structures_equal(a, b, use_sympy) for a, b in zip(first[3], second[3]))
    if first[0] == "unordered" and second[0] == "unordered":
        first_items, second_items = first[2], second[2]
        if first[1] != "list" or second[1] != "list":  # a set is its distinct elements: {1,1,2} is {1,2}
            first_items, second_items = _distinct(first_items, use_sympy), _distinct(second_items, use_sympy)
        if len(first_items) != len(second_items):
            return False
        unmatched = list(second_items)
        for item in first_items:  # every answer must be matched by a different answer on the other side
            match = next((other for other in unmatched if _structures_equal(item, other, use_sympy)), None)
            if match is None:
                return False
            unmatched.remove(match)
        return True
    if {first[0], second[0]} == {"matrix", "leaf"}:  # "\\begin{pmatrix}1\\\\2\\end{pmatrix}" against "2A" or a product
        matrix, leaf = (first, second) if first[0] == "matrix" else (second, first)
        if "\\begin{" not in leaf[1] or any(cell[0] != "leaf" for row in matrix[1] for cell in row):
            return False
        rows = "\\\\".join("&".join(cell[1] for cell in row) for row in matrix[1])
        return _leaves_equal("\\begin{pmatrix}" + rows + "\\end{pmatrix}", leaf[1], use_sympy)
    if first[0] == "matrix" and second[0] == "matrix":
        if [len(row) for row in first[1]] != [len(row) for row in second[1]]:
            return False
        return all(_structures_equal(a, b, use_sympy)
                   for row_a, row_b in zip(first[1], second[1]) for a, b in zip(row_a, row_b))
    return False


def _distinct(items, use_sympy):
    """The items without repeats (equal by our rules: "\\{1, 1.0, 2\\}" has two elements)."""
    distinct = []
    for item in items:
        if not any(_structures_equal(item, other, use_sympy) for other in distinct):
            distinct.append(item)
    return distinct




def _split_chain(leaf):
    """ "x=3+8=11" -> (["x", "3+8", "11"], ["=", "="]): cut at "=" and \\approx outside brackets."""
    members, relations, depth, start = [], [], 0, 0
    for match in re.finditer(r"[([{]|[)\]}]|=|\\approx ?", leaf):
        token = match.group()
        if token in "([{":
            depth += 1
        elif token in ")]}":
            depth -= 1
        elif depth == 0:
            members.append(leaf[start:match.start()])
            relations.append(token.strip())
            start = match.end()
    members.append(leaf[start:])
    return members, relations


def _is_equation(leaf):
    """An "=" outside brackets: "x+y=1" is an equation, "\\sum_{k=1}^{n} k" is not."""
    return "=" in _split_chain(leaf)[1]


def _is_constant(text):
    """No variable letters once LaTeX commands and the indices of series are removed: "3+\\frac{8}{2}" and
    "\\sum_{k=1}^{10} k" are constant, "a+b" is not."""
    for index in re.findall(r"\\(?:sum|prod)_\{([a-zA-Z])=", text):
        text = re.sub(r"(?<!\\)\b" + index + r"\b|(?<=[\d}])" + index + r"(?![a-zA-Z])", "", text)
    return not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", text))


def _approximates(value, approximation, use_sympy):
    """Whether the number `approximation` is `value` correctly rounded at its own last written digit."""
    number = _parse_number(approximation)
    if number is None or abs(number.value) == float("inf"):
        return False
    half_step = (number.resolution or Fraction(1)) / 2
    exact = _parse_number(value)
    if exact is not None and exact.resolution is None and abs(exact.value) != float("inf"):
        return abs(exact.value - number.value) <= half_step
    if not use_sympy:
        raise _NeedsSympy
    import sympy
    evaluated = _evaluate(_latex_to_sympy(value), {}, _NUMERIC_DIGITS)
    if evaluated is None or abs(sympy.im(evaluated)) > 0:
        return False
    return abs(sympy.re(evaluated) - sympy.Rational(number.value.numerator, number.value.denominator)) <= \
        sympy.Rational(half_step.numerator, half_step.denominator)


def _reduce_chain(leaf, use_sympy):
    """A chain of equalities and approximations, reduced to the answer it states, or False when one of
    its links is false. "x=3+8=11" -> "x=11"; "\\frac{\\sqrt3}{3}\\approx0.577" -> "\\frac{\\sqrt3}{3}" (the
    exact value before the first approximation); "3+3=2" -> False. Other leaves come back unchanged."""
    members, relations = _split_chain(leaf)
    label = None
    if len(members) > 1 and _ASSIGNMENT.fullmatch(members[0] + "=" + members[1].replace("=", "")):
        label, members, relations = members[0], members[1:], relations[1:]
    if label is not None and not relations:
        return label + "=" + members[0]  # "x=5", or "x\\approx0.577": the value it states
    if not relations or not all(members):
        return leaf
    if label is None and relations == ["="] and not all(map(_is_constant, members)):
        return leaf  # an equation such as "x+y=1", not a chain
    value = None
    for index, relation in enumerate(relations):
        if relation == "=":
            holds = _leaves_equal(members[index], members[index + 1], use_sympy)
        else:
            holds = _approximates(members[index], members[index + 1], use_sympy)
            value = members[index] if value is None else value
        if not holds:
            return False
    value = members[-1] if value is None else value
    return value if label is None else label + "=" + value


def _choice_letter(leaf):
    match = _CHOICE_LETTER.fullmatch(leaf)
    return match and (match.group(1) or match.group(2))


def _split_assignment(leaf):
    """("x", "5") for "x=5", ("f(x)", "2x") for "f(x)=2x"; None for anything else."""
    match = _ASSIGNMENT.fullmatch(leaf)
    return (match.group(1), match.group(2)) if match else None


def _leaves_equal(first, second, use_sympy):
    """Compare two canonical single answers: cheap rules first, then sympy (in workers only)."""
    if first == second:
        return True
    if not first or not second:
        return False
    if "=" in first + second or "\\approx" in first + second:
        first, second = _reduce_chain(first, use_sympy), _reduce_chain(second, use_sympy)
        if first is False or second is False:
            return False
        if first == second:
            return True
    for one, other in ((first, second), (second, first)):  # multiple choice: the other side is "B"
        if re.fullmatch(r"[A-E]", other) and _choice_letter(one):
            return _choice_letter(one) == other
    if _WORDS.fullmatch(first) and _WORDS.fullmatch(second):  # text answers: "Even" == "even"
        return first.casefold() == second.casefold()
    first_number, second_number = _parse_number(first), _parse_number(second)
    if first_number is not None and second_number is not None:
        return _numbers_equal(first_number, second_number)
    first_assignment, second_assignment = _split_assignment(first), _split_assignment(second)
    if first_assignment and second_assignment and first_assignment[0] == second_assignment[0]:
        return _leaves_equal(_canonical(first_assignment[1]), _canonical(second_assignment[1]), use_sympy)
    first_equation, second_equation = _is_equation(first), _is_equation(second)
    if first_assignment and not second_equation:  # "x=5" == "5"
        return _leaves_equal(_canonical(first_assignment[1]), second, use_sympy)
    if second_assignment and not first_equation:
        return _leaves_equal(first, _canonical(second_assignment[1]), use_sympy)
    if first_equation != second_equation:
        return False
    if (_WORDS.fullmatch(first) and second_number) or (_WORDS.fullmatch(second) and first_number):
        return False
    if not use_sympy:
        raise _NeedsSympy
    try:
        return _sympy_leaves_equal(first, second)
    except Exception:  # parse errors, size guards, and any sympy failure on odd input: not equal
        return False


#### LaTeX to sympy (workers only): a small recursive-descent parser that builds sympy objects
#
# Grammar, loosest binding first:
#   relation   := expression (("=" | "<" | ">" | \le | \ge | \neq) expression)*
#   expression := term (("+" | "-") term)*
#   term       := signed (("*" | \cdot | \times | "/" | \div) signed | implicit factor)*
#   signed     := ("-" | "+") signed | power            -2^2 is -(2^2)
#   power      := postfix ("^" exponent)?
#   postfix    := atom "!"*
#   atom       := number | letter[_sub] | (expr) | [expr] | {expr} | |expr| | \frac | \sqrt | \binom
#               | \pi | \infty | greek letter | function such as \sin^2 x, \log_2 8 | \lfloor x \rfloor

_TOKEN = re.compile(r"(?P<space>\s+)|(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<command>\\[a-zA-Z]+)"
                    r"|(?P<escaped>\\.)|(?P<letter>[a-zA-Z])|(?P<symbol>.)", re.DOTALL)
_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta",
          "iota", "kappa", "lambda", "mu", "nu", "xi", "rho", "sigma", "tau", "upsilon", "phi", "varphi",
          "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi",
          "Omega", "ell", "hbar"}
_FUNCTIONS = {"sin": "sin", "cos": "cos", "tan": "tan", "cot": "cot", "sec": "sec", "csc": "csc",
              "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh",
              "tanh": "tanh", "ln": "log", "log": "log", "exp": "exp"}
_INVERSE_FUNCTIONS = {"sin": "asin", "cos": "acos", "tan": "atan"}  # \sin^{-1} x is arcsin x
_RELATIONS = {"=": "=", "<": "<", ">": ">", "\\le": "\\le", "\\ge": "\\ge", "\\neq": "\\neq",
              "\\leq": "\\le", "\\geq": "\\ge", "\\ne": "\\neq"}
_MULTIPLY = {"*", "\\cdot", "\\times"}
_DIVIDE = {"/", "\\div"}
_CLOSING = {"(": ")", "[": "]", "{": "}"}
_ATOM_COMMANDS = {"\\frac", "\\sqrt", "\\binom", "\\pi", "\\infty", "\\lfloor", "\\lceil", "\\imath", "\\sum",
                  "\\prod", "\\begin"}
_SIMPLE_ATOM_COMMANDS = {"\\pi"} | {"\\" + name for name in _GREEK}
_MIXED_NUMBER_IN_TEXT = re.compile(r"(?<![\w.}^_])(\d+)\\frac(?:\{(\d+)\}|(\d))(?:\{(\d+)\}|(\d))")


class _Tokens:
    """A cursor over the tokens of one answer; the parse functions below advance it."""

    def __init__(self, text):
        self.tokens = [(match.lastgroup, match.group()) for match in _TOKEN.finditer(text)
                       if match.lastgroup != "space"]
        self.position = 0
        self.depth = 0
        self.bindings = {}  # index of a \sum or \prod being evaluated -> its current value
        self.series_terms = 0

    def peek(self):
        return self.tokens[self.position] if self.position < len(self.tokens) else ("end", "")

    def take(self):
        token = self.peek()
        self.position += 1
        return token

    def expect(self, text):
        token = self.take()
        if token[1] != text:
            raise _ParseError(f"expected {text!r}, found {token[1]!r}")

    def take_single_character(self):
        """LaTeX arguments without braces are one character: "x^23" is x^2 * 3, "\\frac12" is 1/2."""
        kind, text = self.peek()
        if kind == "number" and len(text) > 1 and text[0].isdigit():
            self.tokens[self.position] = ("number", text[1:])
            return ("number", text[0])
        return self.take()


def _rewrite_mixed_numbers(text):
    def rewrite(match):
        whole, numerator = match.group(1), match.group(2) or match.group(3)
        denominator = match.group(4) or match.group(5)
        if 0 < int(numerator) < int(denominator):
            return "(" + whole + "+\\frac{" + numerator + "}{" + denominator + "})"
        return match.group()
    return _MIXED_NUMBER_IN_TEXT.sub(rewrite, text)


@lru_cache(maxsize=4096)
def _latex_to_sympy(text):
    """A sympy expression, or ("relation", [expressions], [operators]) for "a = b", "a < b < c"."""
    if len(text) > MAX_ANSWER_CHARS or _nesting_depth(text) > MAX_NESTING_DEPTH:
        raise _TooLarge("answer too long or nested too deeply")
    tokens = _Tokens(_rewrite_mixed_numbers(text))
    result = _parse_relation(tokens)
    if tokens.peek()[0] != "end":
        raise _ParseError(f"unexpected {tokens.peek()[1]!r}")
    return result


def _parse_relation(tokens):
    expressions, operators = [_parse_expression(tokens)], []
    while tokens.peek()[1] in _RELATIONS:
        operators.append(_RELATIONS[tokens.take()[1]])
        expressions.append(_parse_expression(tokens))
    return ("relation", expressions, operators) if operators else expressions[0]


def _parse_expression(tokens):
    tokens.depth += 1
    if tokens.depth > MAX_NESTING_DEPTH:
        raise _TooLarge("expression nested too deeply")
    value = _parse_term(tokens)
    while tokens.peek()[1] in ("+", "-"):
        sign = tokens.take()[1]
        term = _parse_term(tokens)
        value = value + term if sign == "+" else value - term
    tokens.depth -= 1
    return value


def _starts_factor(token):
    """Whether the token can begin an implicitly multiplied factor: "2x", "3\\sqrt2", "(x+1)(x-1)"."""
    kind, text = token
    if kind in ("number", "letter") or text in ("(", "{"):
        return True
    return kind == "command" and (text in _ATOM_COMMANDS or text[1:] in _GREEK or text[1:] in _FUNCTIONS)


def _parse_term(tokens):
    value = _parse_signed(tokens)
    while True:
        token = tokens.peek()
        if token[1] in _MULTIPLY:
            tokens.take()
            value = value * _parse_signed(tokens)
        elif token[1] in _DIVIDE:
            tokens.take()
            value = value / _parse_signed(tokens)
        elif _starts_factor(token):
            value = value * _parse_power(tokens)
        else:
            return value


def _parse_signed(tokens):
    if tokens.peek()[1] == "-":
        tokens.take()
        return -_parse_signed(tokens)
    if tokens.peek()[1] == "+":
        tokens.take()
        return _parse_signed(tokens)
    return _parse_power(tokens)


def _parse_power(tokens):
    base = _parse_postfix(tokens)
    if tokens.peek()[1] == "^":
        tokens.take()
        return _guarded_power(base, _parse_exponent(tokens))
    return base


def _parse_exponent(tokens):
    if tokens.peek()[1] == "{":
        return _parse_atom(tokens)
    if tokens.peek()[1] == "-":  # "x^-1", sloppy but common
        tokens.take()
        return -_parse_argument(tokens)
    return _parse_argument(tokens)


def _parse_postfix(tokens):
    value = _parse_atom(tokens)
    while tokens.peek()[1] == "!":
        tokens.take()
        value = _guarded_factorial(value)
    return value


def _parse_argument(tokens):
    """A braced group, or a single character or command: the argument of \\frac, \\sqrt, ^."""
    if tokens.peek()[1] == "{":
        return _parse_atom(tokens)
    if tokens.peek()[0] == "number":
        return _number_literal(tokens.take_single_character()[1])
    return _parse_atom(tokens)


def _number_literal(text):
    import sympy
    exponent = re.search(r"[eE]([-+]?\d+)$", text)
    if exponent and abs(int(exponent.group(1))) > _MAX_DECIMAL_EXPONENT:
        raise _TooLarge("number too large")
    value = Fraction(text)  # exact: "0.1" is 1/10, not a binary float
    return sympy.Rational(value.numerator, value.denominator)


def _parse_symbol(name, tokens):
    """A variable, with its subscript: "x_1" and "x_{1}" are the same symbol. Bare e and i are constants."""
    import sympy
    if tokens.peek()[1] == "_":
        tokens.take()
        if tokens.peek()[1] == "{":
            tokens.take()
            subscript, depth = [], 1
            while True:
                kind, text = tokens.take()
                depth += (text == "{") - (text == "}")
                if kind == "end" or depth == 0:
                    break
                subscript.append(text)
            if kind == "end":
                raise _ParseError("unclosed subscript")
        else:
            subscript = [tokens.take_single_character()[1]]
        return sympy.Symbol(name + "_" + "".join(subscript))
    if name in tokens.bindings:
        return tokens.bindings[name]
    if name == "e":
        return sympy.E
    if name == "i":
        return sympy.I
    return sympy.Symbol(name)


def _parse_atom(tokens):
    import sympy
    kind, text = tokens.take()
    if kind == "number":
        return _number_literal(text)
    if kind == "letter":
        return _parse_symbol(text, tokens)
    if text in _CLOSING:
        inner = _parse_expression(tokens)
        tokens.expect(_CLOSING[text])
        return inner
    if text == "|":
        inner = _parse_expression(tokens)
        tokens.expect("|")
        return sympy.Abs(inner)
    if kind == "command":
        return _parse_command(text[1:], tokens)
    raise _ParseError(f"unexpected {text!r}" if text else "unexpected end")


def _parse_command(name, tokens):
    import sympy
    if name == "frac":
        numerator = _parse_argument(tokens)
        return numerator / _parse_argument(tokens)
    if name == "sqrt":
        index = None
        if tokens.peek()[1] == "[":
            tokens.take()
            index = _parse_expression(tokens)
            tokens.expect("]")
        radicand = _parse_argument(tokens)
        if index is None:
            return sympy.sqrt(radicand)
        if index.is_Integer and index % 2 == 1 and radicand.is_Number and radicand < 0:
            return -sympy.root(-radicand, index)  # the real cube root: \sqrt[3]{-8} = -2
        return sympy.root(radicand, index)
    if name == "binom":
        n = _parse_argument(tokens)
        k = _parse_argument(tokens)
        if (n.is_Number and abs(n) > 10 * MAX_FACTORIAL) or (k.is_Number and abs(k) > 10 * MAX_FACTORIAL):
            raise _TooLarge("binomial too large")
        return sympy.binomial(n, k)
    if name in ("sum", "prod"):
        return _parse_series(name, tokens)
    if name == "begin":
        return _parse_matrix(tokens)
    if name == "pi":
        return sympy.pi
    if name == "infty":
        return sympy.oo
    if name == "imath":
        return sympy.I
    if name in _GREEK:
        return _parse_symbol(name, tokens)
    if name in _FUNCTIONS:
        return _parse_function(name, tokens)
    if name in ("lfloor", "lceil"):
        inner = _parse_expression(tokens)
        tokens.expect("\\rfloor" if name == "lfloor" else "\\rceil")
        return sympy.floor(inner) if name == "lfloor" else sympy.ceiling(inner)
    raise _ParseError(f"unsupported command \\{name}")


def _parse_series(name, tokens):
    """\\sum_{k=1}^{n} body and \\prod: evaluated term by term when the bounds are integers and there are
    at most MAX_SERIES_TERMS terms (the body is parsed again for each value, so the size guards see
    numbers); otherwise kept unevaluated, as Sum(body, low, high) with a canonical index, so that it
    equals only the same series."""
    import sympy
    low = high = None
    while tokens.peek()[1] in ("_", "^"):
        if tokens.take()[1] == "^":
            high = _parse_argument(tokens)
            continue
        tokens.expect("{")
        kind, index = tokens.take()
        if kind not in ("letter", "command"):
            raise _ParseError("a series needs an index")
        index = index.lstrip("\\")
        tokens.expect("=")
        low = _parse_expression(tokens)
        tokens.expect("}")
    if low is None or high is None:
        raise _ParseError("a series needs both bounds")
    start, saved = tokens.position, list(tokens.tokens)
    symbolic = _parse_series_body(tokens)
    end = tokens.position
    count = high - low + 1 if low.is_Integer and high.is_Integer else None
    if count is None or tokens.series_terms + max(count, 0) > MAX_SERIES_TERMS:
        dummy = sympy.Symbol("_series_index")
        return sympy.Function("Sum" if name == "sum" else "Product")(
            symbolic.subs(sympy.Symbol(index), dummy), low, high)
    value, outer = sympy.Integer(0 if name == "sum" else 1), tokens.bindings.get(index)
    for term_index in range(int(low), int(high) + 1):
        tokens.tokens[start:end] = saved[start:end]  # single-character arguments split tokens in place
        tokens.position = start
        tokens.bindings[index] = sympy.Integer(term_index)
        term = _parse_series_body(tokens)
        value = value + term if name == "sum" else value * term
        if value.is_Rational and max(abs(value.p), value.q).bit_length() > MAX_POWER_BITS:
            raise _TooLarge("series too large")
    tokens.bindings.pop(index)
    if outer is not None:
        tokens.bindings[index] = outer
    tokens.position = end
    return value


def _parse_series_body(tokens):
    """The body of a series: up to the next + or - outside brackets. Every parse of a body, nested ones
    included, spends one of MAX_SERIES_TERMS, so nested series cannot multiply the work."""
    tokens.series_terms += 1
    if tokens.series_terms > MAX_SERIES_TERMS:
        raise _TooLarge("series too large")
    return _parse_term(tokens)


def _parse_matrix(tokens):
    """\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix} (any matrix environment) as a sympy matrix, for
    matrix arithmetic: "2\\begin{pmatrix}1\\\\2\\end{pmatrix}", products, sums, small integer powers."""
    import sympy
    tokens.expect("{")
    environment = []
    while tokens.peek()[1] not in ("}", ""):
        environment.append(tokens.take()[1])
    tokens.expect("}")
    environment = "".join(environment)
    if tokens.peek()[1] == "{" and environment == "array":  # column layout such as {cc}
        while tokens.take()[1] not in ("}", ""):
            pass
    rows, row = [], []
    while True:
        row.append(_parse_expression(tokens))
        separator = tokens.take()[1]
        if separator == "&":
            continue
        if separator in ("\\\\", "\\end"):
            rows.append(row)
            row = []
            if separator == "\\\\" and tokens.peek()[1] == "\\end":
                tokens.take()
                separator = "\\end"
            if separator == "\\end":
                break
            continue
        raise _ParseError(f"unexpected {separator!r} in a matrix")
    tokens.expect("{")
    while tokens.peek()[1] not in ("}", ""):
        tokens.take()
    tokens.expect("}")
    if len({len(cells) for cells in rows}) != 1 or len(rows) * len(rows[0]) > MAX_MATRIX_ENTRIES:
        raise _TooLarge("matrix too large or ragged")
    return sympy.ImmutableMatrix(rows)


def _parse_function(name, tokens):
    """\\sin x, \\sin(2x), \\sin^2 x, \\sin^{-1} x, \\log_2 8, \\ln 2."""
    import sympy
    power = base = None
    if tokens.peek()[1] == "^":
        tokens.take()
        power = _parse_exponent(tokens)
    if tokens.peek()[1] == "_" and name == "log":
        tokens.take()
        base = _parse_argument(tokens)
    if power == -1 and name in _INVERSE_FUNCTIONS:
        name, power = _INVERSE_FUNCTIONS[name], None
    if tokens.peek()[1] in ("(", "{", "["):
        argument = _parse_atom(tokens)
    else:  # "\sin 2x" is sin(2x); the argument stops at an operator or another function
        argument = _parse_power(tokens)
        while tokens.peek()[0] in ("number", "letter") or tokens.peek()[1] in _SIMPLE_ATOM_COMMANDS:
            argument = argument * _parse_power(tokens)
    function = getattr(sympy, _FUNCTIONS.get(name, name))
    value = sympy.log(argument, base) if base is not None else function(argument)
    return value if power is None else _guarded_power(value, power)


#### Size guards: refuse what would make sympy hang, before it is built

def _guarded_power(base, exponent):
    import sympy
    if isinstance(base, sympy.MatrixBase):  # A^T, A^{-1}, A^3 on small matrices
        if exponent == sympy.Symbol("T"):
            return base.T
        if not exponent.is_Integer or abs(exponent) > MAX_MATRIX_POWER:
            raise _TooLarge("matrix power too large")
        return base ** int(exponent)
    if base.is_Number and exponent.is_Number and base.is_finite and exponent.is_finite:
        trivial_base = base.is_Integer and abs(base) <= 1  # 1^{10^9} is just 1
        base_bits = max(math.log2(abs(base.p) or 1), math.log2(base.q)) if base.is_Rational else 64
        if not trivial_base and abs(exponent) * base_bits > MAX_POWER_BITS:  # sympy numbers: no overflow
            raise _TooLarge("power too large")
    elif exponent.is_Number and exponent.is_finite and abs(exponent) > MAX_SYMBOLIC_EXPONENT:
        raise _TooLarge("exponent too large")
    return sympy.Pow(base, exponent)


def _guarded_factorial(value):
    import sympy
    if value.is_Number and value.is_finite and abs(value) > MAX_FACTORIAL:
        raise _TooLarge("factorial too large")
    return sympy.factorial(value)


#### Sympy equivalence (workers only)

_SAMPLE_VALUES = ("0.7213", "-1.3247", "2.1372", "0.4196", "-0.6931", "1.6180", "-2.4142", "1.1429")
_SAMPLE_POINTS = 6
_SAMPLE_TOLERANCE = 1e-9  # relative; sample points are evaluated with 30 digits
_NUMERIC_DIGITS = 50  # constants are compared with 50 digits, which separates 2^-99 from 2^-98 easily


def _sample_points(symbols):
    """Fixed, "generic" values for the variables, so verdicts are deterministic."""
    import sympy
    ordered = sorted(symbols, key=lambda symbol: symbol.name)
    return [{symbol: sympy.Float(_SAMPLE_VALUES[(point + 3 * index) % len(_SAMPLE_VALUES)], 30)
             for index, symbol in enumerate(ordered)} for point in range(_SAMPLE_POINTS)]


def _evaluate(expression, point, digits=30):
    """The numeric value of expression at point (a sympy number, maybe complex), or None."""
    import sympy
    try:
        value = expression.evalf(digits, subs=point)
        complex(value)  # raises TypeError unless value is a finite or infinite number
    except Exception:
        return None
    if value.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return None
    return value


def _close(first, second):
    """Equal up to the relative sample tolerance (tiny absolute slack only for rounding around zero)."""
    return abs(first - second) <= _SAMPLE_TOLERANCE * max(abs(first), abs(second)) + 1e-25


def _sympy_leaves_equal(first, second):
    import sympy
    first_value, second_value = _latex_to_sympy(first), _latex_to_sympy(second)
    first_matrix, second_matrix = (isinstance(value, sympy.MatrixBase) for value in (first_value, second_value))
    if first_matrix or second_matrix:
        return (first_matrix and second_matrix and first_value.shape == second_value.shape
                and all(_expressions_equal(a, b) for a, b in zip(first_value, second_value)))
    first_relation, second_relation = isinstance(first_value, tuple), isinstance(second_value, tuple)
    if first_relation or second_relation:
        return first_relation and second_relation and _relations_equal(first_value, second_value)
    for text, other in ((first, second_value), (second, first_value)):  # the tolerance rule
        number = _parse_number(text)
        if number is not None and number.resolution is not None and not other.free_symbols:
            return _decimal_matches(number, other)
    return _expressions_equal(first_value, second_value)


def _decimal_matches(number, expression):
    import sympy
    value = _evaluate(expression, {}, _NUMERIC_DIGITS)
    if value is None or abs(sympy.im(value)) > 0:
        return False
    exact = sympy.Rational(number.value.numerator, number.value.denominator)
    if number.significant_digits < 3 or number.resolution >= 1:  # no tolerance: only the exact value
        return abs(exact - value) <= abs(value) * 10 ** -40
    return abs(exact - value) <= sympy.Rational(number.resolution.numerator, number.resolution.denominator) / 2


def _expressions_equal(first, second):
    import sympy
    if first == second:
        return True
    if any(value.has(sympy.oo, -sympy.oo, sympy.zoo, sympy.nan) for value in (first, second)):
        return False  # infinities are only equal to themselves, checked just above
    difference = first - second
    if difference == 0:
        return True
    symbols = first.free_symbols | second.free_symbols
    if not symbols:
        if difference.is_Rational:
            return False  # exact and nonzero: 1/2^99 - 1/2^98
        first_number, second_number = _evaluate(first, {}, _NUMERIC_DIGITS), _evaluate(second, {}, _NUMERIC_DIGITS)
        if first_number is not None and second_number is not None:
            scale, gap = max(abs(first_number), abs(second_number)), abs(first_number - second_number)
            if gap <= scale * sympy.Float(10) ** -30:
                return True
            if gap > scale * sympy.Float(10) ** -15:
                return False
        return sympy.simplify(difference) == 0
    agreements = 0
    for point in _sample_points(symbols):
        first_number, second_number = _evaluate(first, point), _evaluate(second, point)
        if first_number is None or second_number is None:
            continue
        if not _close(first_number, second_number):
            return False
        agreements += 1
    if agreements >= 3:
        return True
    return sympy.simplify(difference) == 0


def _proportional(first, second, positive):
    """Whether first = c * second for a constant c != 0 (c > 0 when positive)."""
    import sympy
    symbols = first.free_symbols | second.free_symbols
    if not symbols:
        return _expressions_equal(first, second)
    ratios = []
    for point in _sample_points(symbols):
        first_number, second_number = _evaluate(first, point), _evaluate(second, point)
        if first_number is not None and second_number is not None and abs(second_number) > 1e-20:
            ratios.append(complex(first_number / second_number))
    if len(ratios) < 3:
        ratio = sympy.simplify(first / second)
        return bool(ratio.is_number and ratio != 0 and (not positive or ratio.is_positive))
    constant = ratios[0]
    if abs(constant) < 1e-20 or (positive and (abs(constant.imag) > 1e-9 or constant.real <= 0)):
        return False
    return all(abs(ratio - constant) <= _SAMPLE_TOLERANCE * abs(constant) for ratio in ratios)


def _relations_equal(first, second):
    """ "x+y=1" == "2x+2y=2"; "a < b" == "b > a"; chains compare link by link."""
    def oriented(relation):  # write ">" chains as "<" chains
        _, expressions, operators = relation
        if all(operator in (">", "\\ge") for operator in operators):
            flipped = {">": "<", "\\ge": "\\le"}
            return expressions[::-1], [flipped[operator] for operator in operators[::-1]]
        return expressions, operators

    first_expressions, first_operators = oriented(first)
    second_expressions, second_operators = oriented(second)
    if first_operators != second_operators:
        return False
    for index, operator in enumerate(first_operators):
        first_gap = first_expressions[index + 1] - first_expressions[index]
        second_gap = second_expressions[index + 1] - second_expressions[index]
        if not _proportional(first_gap, second_gap, positive=operator in ("<", "\\le")):
            return False
    return True


#### Worker processes: every sympy comparison under a hard deadline
#
# The training process holds a vLLM engine with threads, so workers are never forked from it: they
# come from a "forkserver" (a clean process that has imported sympy once, so a replacement for a
# killed worker starts quickly) or, where that is missing, are "spawn"ed. The pool is started on first
# need and reused across calls. Each comparison gets its own deadline when it is handed to a worker; a
# worker that overruns is SIGKILLed and replaced while the other workers go on with the batch.

_workers = []  # each: {"process", "connection", "state": "starting" | "idle" | "busy", "job", "deadline"}
_pool_lock = threading.Lock()
_context = None


def default_num_workers():
    return min(4, os.cpu_count() or 1)


def _process_context():
    global _context
    if _context is None:
        if "forkserver" in multiprocessing.get_all_start_methods():
            _context = multiprocessing.get_context("forkserver")
            _context.set_forkserver_preload(["__main__", "sympy", __name__])
        else:
            _context = multiprocessing.get_context("spawn")
        atexit.register(close_workers)
    return _context


_WARM_UP_PAIRS = (("\\frac{\\sqrt{2}}{2}+x^2", "\\frac{1}{\\sqrt2}+x\\cdot x"), ("x+y=1", "2x+2y=2"),
                  ("\\sin(\\pi/6)", "0.500"), ("4:30", "4"))


def _worker_main(connection):
    """A worker's life: say "ready", then compare (prediction, gold) pairs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which then stops us
    for prediction, gold in _WARM_UP_PAIRS:  # sympy's first use is slow (lazy imports, caches): pay it
        _compare_answers(prediction, gold, use_sympy=True)  # before "ready", never inside a deadline
    connection.send("ready")
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            verdict = bool(_compare_answers(job[0], job[1], use_sympy=True))
        except Exception:  # a crash in sympy on model text is a wrong answer, not a dead worker
            verdict = False
        connection.send(verdict)


def _start_worker():
    context = _process_context()
    parent_end, child_end = context.Pipe()
    process = context.Process(target=_worker_main, args=(child_end,), name="reward-worker", daemon=True)
    process.start()
    child_end.close()
    return {"process": process, "connection": parent_end, "state": "starting", "job": None,
            "deadline": time.monotonic() + WORKER_START_TIMEOUT_SECONDS}


def _kill_worker(worker):
    worker["process"].kill()  # SIGKILL: a comparison stuck inside sympy cannot ignore it
    worker["process"].join(timeout=5)
    worker["connection"].close()


def close_workers():
    """Stop the worker pool (it is restarted on the next comparison that needs it)."""
    with _pool_lock:
        for worker in _workers:
            try:
                worker["connection"].send(None)
            except (OSError, ValueError):
                pass
        for worker in _workers:
            worker["process"].join(timeout=1)
            if worker["process"].is_alive():
                worker["process"].kill()
                worker["process"].join(timeout=5)
            worker["connection"].close()
        _workers.clear()


def _replace_worker(index):
    _kill_worker(_workers[index])
    _workers[index] = _start_worker()


def _receive(worker):
    """The worker's message ("ready" or a verdict), or None if it died (say, out of memory)."""
    try:
        return worker["connection"].recv()
    except (EOFError, OSError):
        return None


def _compare_in_workers(pairs, timeout, num_workers):
    """Compare (prediction, gold) pairs with sympy in the worker pool. Returns (verdicts, timed_out)."""
    verdicts, timed_out = [False] * len(pairs), [False] * len(pairs)
    if not pairs:
        return verdicts, timed_out
    with _pool_lock:
        while len(_workers) < num_workers:
            _workers.append(_start_worker())
        pool = range(num_workers)  # indices into _workers
        queue, remaining, failed_starts = deque(range(len(pairs))), len(pairs), 0
        while remaining:
            # Hand a job to every idle worker; its deadline starts now.
            for index in pool:
                if _workers[index]["state"] == "idle" and queue:
                    job = queue.popleft()
                    try:
                        _workers[index]["connection"].send(pairs[job])
                    except OSError:  # it died while idle: replace it and retry the job
                        queue.appendleft(job)
                        _replace_worker(index)
                        continue
                    _workers[index].update(state="busy", job=job, deadline=time.monotonic() + timeout)
            # Sleep until a worker answers or the earliest deadline passes.
            waiting = [_workers[index] for index in pool if _workers[index]["state"] != "idle"]
            wait_seconds = max(0.0, min(worker["deadline"] for worker in waiting) - time.monotonic())
            ready = multiprocessing.connection.wait([worker["connection"] for worker in waiting], wait_seconds)
            for index in pool:
                worker = _workers[index]
                if worker["state"] == "idle":
                    continue
                if worker["connection"] in ready:
                    message = _receive(worker)
                elif time.monotonic() > worker["deadline"]:
                    message = None  # overran its deadline
                else:
                    continue
                if message is not None:  # "ready" from a new worker, or a verdict
                    if worker["state"] == "busy":
                        verdicts[worker["job"]] = bool(message)
                        remaining -= 1
                    worker.update(state="idle", job=None)
                    continue
                # The worker overran its deadline or died: the answer counts as wrong, and the
                # worker is killed and replaced.
                if worker["state"] == "busy":
                    timed_out[worker["job"]] = True
                    remaining -= 1
                else:
                    failed_starts += 1
                    if failed_starts > 3:
                        raise RuntimeError("reward workers fail to start (a script that grades needs the "
                                           "`if __name__ == '__main__':` guard)")
                _replace_worker(index)
    return verdicts, timed_out


#### Grading: one pair, one batch

def _quick_verdict(prediction, gold):
    """True/False when decidable without sympy (in this process), None when a worker must decide."""
    try:
        return _compare_answers(prediction, gold, use_sympy=False)
    except _NeedsSympy:
        return None
    except Exception:  # a bug in a cheap rule must not crash training: let the worker decide
        return None


def _judge(predictions, golds, timeout, num_workers):
    """(correct, timed_out) lists: cheap verdicts here, the rest in parallel workers."""
    correct, timed_out = [False] * len(predictions), [False] * len(predictions)
    undecided = {}  # (prediction, gold) -> indices; a rollout batch repeats answers a lot
    for index, (prediction, gold) in enumerate(zip(predictions, golds)):
        verdict = _quick_verdict(prediction, gold)
        if verdict is None:
            undecided.setdefault((prediction, gold), []).append(index)
        else:
            correct[index] = verdict
    pairs = list(undecided)
    verdicts, overran = _compare_in_workers(pairs, timeout, max(1, num_workers or default_num_workers()))
    for pair, verdict, timeout_hit in zip(pairs, verdicts, overran):
        for index in undecided[pair]:
            correct[index], timed_out[index] = verdict, timeout_hit
    return correct, timed_out


def answers_match(prediction, gold, timeout=DEFAULT_TIMEOUT_SECONDS):
    """True when the extracted prediction is equivalent to the gold answer (rules in the module docstring)."""
    return _judge([prediction], [None if gold is None else str(gold)], timeout, None)[0][0]


def _reward(reward_scheme, correct, boxed, well_formatted):
    if reward_scheme == "correct":
        return 1.0 if correct else 0.0
    if reward_scheme == "simplerl":
        return 1.0 if correct and boxed else (-0.5 if boxed else -1.0)
    return (1.0 if correct else 0.0) if well_formatted else -1.0  # format-gated


def grade_batch(responses, golds, reward_scheme="correct", *, timeout=DEFAULT_TIMEOUT_SECONDS,
                num_workers=None, unboxed_fallback=False, grader="zerorl"):
    """Grade one rollout batch. Returns a dict of lists, one entry per response:
    pred (extracted answer or None), correct (bool), reward (float), timeouts (bool: the comparison
    overran its deadline and was counted as incorrect)."""
    if reward_scheme not in REWARD_SCHEMES:
        raise ValueError(f"unknown reward scheme {reward_scheme!r}; choose from {REWARD_SCHEMES}")
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose from {GRADERS}")
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    golds = [None if gold is None else str(gold) for gold in golds]
    boxed = [extract_boxed(response) is not None for response in responses]
    if grader == "math-verify":
        predictions, correct = _grade_with_math_verify(responses, golds, timeout)
        timed_out = [False] * len(responses)  # math-verify hides its own timeouts
    else:
        extracted = [extract_answer(response, unboxed_fallback) for response in responses]
        predictions = [answer for answer, _ in extracted]
        correct, timed_out = _judge(predictions, golds, timeout, num_workers)
    well_formatted = _well_formatted(responses, timeout, num_workers) if reward_scheme == "format" else boxed
    rewards = [_reward(reward_scheme, *flags) for flags in zip(correct, boxed, well_formatted)]
    return {"pred": predictions, "correct": correct, "reward": rewards, "timeouts": timed_out}


def grade_response(response, gold, reward_scheme="correct", **options):
    """(pred, correct, reward) for one response: pred is the extracted answer or None."""
    graded = grade_batch([response], [gold], reward_scheme, **options)
    return graded["pred"][0], graded["correct"][0], graded["reward"][0]


#### Optional backend: math-verify (pip install math-verify), for numbers comparable with papers using it

def _grade_with_math_verify(responses, golds, timeout):
    """math-verify's own extraction and verdict. It parses with its own LaTeX parser and enforces
    its timeouts with signal.alarm, so it is only safe in the main thread; our guards do not apply."""
    try:
        from math_verify import parse, verify
    except ImportError as error:
        raise ImportError("grader 'math-verify' needs `pip install math-verify`") from error
    predictions, correct = [], []
    for response, gold in zip(responses, golds):
        parsed = parse(response, parsing_timeout=max(1, int(timeout)))
        predictions.append(str(parsed[-1]) if parsed else None)
        if gold is None or not parsed:
            correct.append(False)
            continue
        parsed_gold = parse("\\boxed{" + gold + "}", parsing_timeout=max(1, int(timeout)))
        correct.append(bool(verify(parsed_gold, parsed, timeout_seconds=max(1, int(timeout)))))
    return predictions, correct


#### Command line: grade a jsonl file of {"response", "gold"} rows

def _read_rows(path):
    rows = []
    with open(path) as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                sys.exit(f"{path}:{line_number}: not valid JSON ({error})")
            if not isinstance(row, dict):
                sys.exit(f"{path}:{line_number}: expected a JSON object")
            if not isinstance(row.get("response"), str):
                sys.exit(f"{path}:{line_number}: needs a string 'response' field")
            if not isinstance(row.get("gold"), (str, int, float)) or isinstance(row.get("gold"), bool):
                sys.exit(f"{path}:{line_number}: needs a 'gold' field that is a string or a number")
            rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description="Grade responses against gold answers (rules: see the "
                                                 "module docstring of reward.py).")
    parser.add_argument("--input", required=True, help="jsonl with 'response' and 'gold' on each line")
    parser.add_argument("--output", required=True, help="jsonl: each input row plus pred, correct, reward")
    parser.add_argument("--reward-scheme", default="correct", choices=REWARD_SCHEMES)
    parser.add_argument("--grader", default="zerorl", choices=GRADERS,
                        help="zerorl (this module) or math-verify (needs `pip install math-verify`)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS,
                        help="seconds per comparison that needs sympy; an overrun counts as incorrect")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default min(4, cpus))")
    parser.add_argument("--unboxed-fallback", action="store_true",
                        help="also accept 'the answer is ...' when there is no box (never for training)")
    args = parser.parse_args(argv)

    rows = _read_rows(args.input)
    start = time.perf_counter()
    graded = grade_batch([row["response"] for row in rows], [row["gold"] for row in rows], args.reward_scheme,
                         timeout=args.timeout, num_workers=args.workers, unboxed_fallback=args.unboxed_fallback,
                         grader=args.grader)
    seconds = time.perf_counter() - start
    with open(args.output, "w") as file:
        for index, row in enumerate(rows):
            row.update(pred=graded["pred"][index], correct=graded["correct"][index],
                       reward=graded["reward"][index])
            file.write(json.dumps(row) + "\n")
    count = len(rows)
    print(f"graded {count} pairs: accuracy {sum(graded['correct']) / max(count, 1):.4f}, "
          f"timeouts {sum(graded['timeouts'])}, {count / max(seconds, 1e-9):.1f} pairs/s "
          f"({seconds:.2f} s, grader {args.grader})", file=sys.stderr)


if __name__ == "__main__":
    main()
