"""Tests for reward.py: extraction, a table of equivalence cases, hostile inputs and time limits, reward
schemes, the batch API and the CLI, and agreement with real data (gold self-consistency on the eval sets,
stored verdicts on 800 real responses).

    python -m pytest tests/test_reward.py -q
"""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import reward  # noqa: E402
from reward import answers_match, extract_answer, extract_boxed, grade_batch, grade_response  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LIMIT = 2.0  # the per-comparison deadline used by the timing tests
SLACK = 10.0  # the machine is shared: "returns within the limit" means within LIMIT + SLACK seconds


def needs_data(relative_path):
    path = DATA / relative_path
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data directory sits beside the repository in CI)")
    return path


#### Extraction

@pytest.mark.parametrize("response, expected", [
    ("so the answer is \\boxed{5}.", "5"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{3}, then finally \\boxed{4}", "4"),
    ("\\fbox{7}", "7"),
    ("\\framebox{204} minutes", "204"),
    ("\\boxed {x^{2}}", "x^{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("no box here, the answer is 5", None),
    ("\\boxed{3}. Wait, actually \\boxed{\\frac{1}{2", None),  # cut off inside the last box
    ("\\boxed 5", None),
    ("\\boxed{}", ""),
])
def test_extract_boxed(response, expected):
    assert extract_boxed(response) == expected


def test_unboxed_fallback_only_behind_its_flag():
    response = "Adding them up, the answer is $42$. Done."
    assert extract_answer(response) == (None, False)
    assert extract_answer(response, unboxed_fallback=True) == ("42", False)
    assert extract_answer("The final answer is \\boxed{7}", unboxed_fallback=True) == ("7", True)
    # A response truncated inside its box is not rescued by the fallback.
    assert extract_answer("the answer is 3, so \\boxed{3", unboxed_fallback=True) == (None, False)
    assert grade_response(response, "42") == (None, False, 0.0)
    assert grade_response(response, "42", unboxed_fallback=True) == ("42", True, 1.0)


#### Equivalence: (prediction, gold, expected verdict), grouped by the rule they exercise

EQUIVALENCE_CASES = [
    # Peer graders' false positives and false negatives named in the issue
    ("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}", False),
    ("5", "500", False),
    ("[0,1)", "(0,1]", False),
    ("3 \\text{ or } 5", "3", False),
    ("5.", "5", True),
    ("3, 2", "2, 3", True),
    # Normalized strings
    ("\\dfrac{9}{7}", "\\frac97", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
    ("$\\sqrt{51}$", "\\sqrt{51}", True),
    ("\\textbf{(113) }", "113", True),
    ("\\mathbf{127} ", "127", True),
    # Numbers: exact rationals, no x100 or /100 leniency
    ("0.5", "\\frac12", True),
    ("-0.75", "-\\frac{3}{4}", True),
    ("1/2", "\\frac{2}{4}", True),
    ("50", "0.5", False),
    ("0.5", "50", False),
    ("055", "55", True),
    ("1\\frac{4}{5}", "\\frac95", True),
    ("137 \\frac{1}{2}", "137.5", True),
    ("4.5e33", "4.5\\times10^{33}", True),
    ("4.5e33", "4.6e33", False),
    ("-1./3", "-\\frac13", True),
    ("420", "419.99", False),
    ("420.00", "420", True),
    # The tolerance rule for decimals
    ("0.333", "\\frac13", True),
    ("0.33", "\\frac13", False),
    ("0.334", "\\frac13", False),
    ("3.14", "\\pi", True),
    ("3.1", "\\pi", False),
    ("1.414", "\\sqrt2", True),
    ("3.14", "3.1416", True),
    ("3.15", "3.1416", False),
    ("1.23e4", "12345", False),  # rounding to whole numbers or coarser never counts
    ("3.14e3", "1000\\pi", False),
    ("3141.59", "1000\\pi", True),
    # Expressions through sympy
    ("\\sqrt8", "2\\sqrt2", True),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("2\\sqrt{113}", "\\sqrt{452}", True),
    ("x^2-1", "(x+1)(x-1)", True),
    ("x^2+1", "(x+1)^2", False),
    ("2k+2", "2(k+1)", True),
    ("2k+2", "2(n+1)", False),
    ("\\sin^2 x + \\cos^2 x", "1", True),
    ("\\log_2 8", "3", True),
    ("\\sqrt[3]{-8}", "-2", True),
    ("10!", "3628800", True),
    ("\\binom{5}{2}", "10", True),
    ("2^{2024}", "4^{1012}", True),
    ("2^{2024}", "2^{2023}", False),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt3}", True),
    ("|-3|", "3", True),
    # Complex numbers
    ("3+4i", "4i+3", True),
    ("6 - 5i", "6+5i", False),
    ("e^{i\\pi}", "-1", True),
    ("1+\\sqrt{3} i", "1+i\\sqrt3", True),
    # Tuples and intervals: ordered, brackets matter
    ("(1,2)", "(2,1)", False),
    ("3, 4", "(3, 4)", True),
    ("(6, 31, -1)", "(6,31,-1)", True),
    ("(-\\infty, 0]", "(-\\infty,0)", False),
    ("\\left(\\frac{3}{5},\\frac{8}{3}\\right]", "(0.6, \\frac83]", True),
    # Sets, multi-answer lists, unions: unordered, all required
    ("\\{1,2\\}", "\\{2,1\\}", True),
    ("3, 5", "3, 5, 7", False),
    ("\\{1,2\\}", "(1,2)", False),
    ("x = 2 \\text{ or } x = 3", "2, 3", True),
    ("(-\\infty,-2)\\cup(3,\\infty)", "(3,\\infty)\\cup(-\\infty,-2)", True),
    ("(-\\infty,-2)\\cup(3,\\infty)", "(-\\infty,-2]\\cup(3,\\infty)", False),
    # \pm
    ("1 \\pm \\sqrt{2}", "1+\\sqrt2, 1-\\sqrt2", True),
    ("1 \\pm \\sqrt{19}", "1-\\sqrt{19}", False),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}", True),
    # Equations
    ("x=5", "5", True),
    ("y = 2x+3", "2x+3", True),
    ("f(x)=2x", "2x", True),
    ("x=5", "y=5", False),
    ("x+y=1", "2x+2y=2", True),
    ("x+y=1", "x-y=1", False),
    ("x=1, y=2", "x=2, y=1", False),
    ("5x - 7y + 11z + 4 = 0", "-5x+7y-11z-4=0", True),
    # Inequalities
    ("x \\ge 5", "[5, \\infty)", True),
    ("1 < x \\le 3", "(1,3]", True),
    ("x > 5", "5 < x", True),
    ("x>5", "[5,\\infty)", False),
    ("x+y>2", "2<x+y", True),
    ("x+y>2", "x+y<2", False),
    # Matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{bmatrix} 1 \\\\ 2 \\end{bmatrix}", True),
    ("\\begin{pmatrix} -1/3 \\\\ 2/3 \\end{pmatrix}",
     "\\begin{pmatrix} -\\frac13 \\\\ \\frac{2}{3} \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 3 \\\\ 2 & 4 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\end{pmatrix}", False),
    # Infinity
    ("\\infty", "+\\infty", True),
    ("\\infty", "-\\infty", False),
    ("infinity", "\\infty", True),
    # Text answers and multiple-choice letters
    ("\\text{Even}", "even", True),
    ("\\text{no solution}", "\\text{No Solution}", True),
    ("\\text{east}", "\\text{west}", False),
    ("\\text{(B)}", "B", True),
    ("\\text{(B)} 12", "B", True),
    ("(C)", "B", False),
    ("(A)(B)", "A", False),  # hedging between choices
    # Units and degrees, percent and dollars (never rescaled)
    ("5.4 \\text{ cents}", "5.4", True),
    ("864 \\mbox{ inches}^2", "864", True),
    ("12 cm", "12", True),
    ("\\frac{37}{4} m", "\\frac{37}{4}", False),
    ("90^\\circ", "90", True),
    ("90^\\circ", "\\frac{\\pi}{2}", False),
    ("10\\%", "10", True),
    ("10\\%", "0.1", False),
    ("\\$18.90", "18.90", True),
    # Thousands separators, bases, membership, the real line
    ("10,\\!080", "10080", True),
    ("1,000,000", "1000000", True),
    ("10{,}000", "10000", True),
    ("3,2", "32", False),
    ("52_8", "52", True),
    ("x \\in [2,5)", "[2,5)", True),
    ("\\mathbb{R}", "(-\\infty,\\infty)", True),
    # Nothing to grade
    ("", "5", False),
    (None, "5", False),
]


@pytest.mark.parametrize("prediction, gold, expected", EQUIVALENCE_CASES,
                         ids=[f"{p!r}~{g!r}" for p, g, _ in EQUIVALENCE_CASES])
def test_equivalence_table(prediction, gold, expected):
    assert answers_match(prediction, gold) is expected
    if prediction is not None:  # the rules treat both sides alike
        assert answers_match(gold, prediction) is expected


# Answer forms of issue 15: each class with positive and negative members.
ANSWER_FORM_CASES = [
    # Inequalities whose variable has a coefficient, a sign or an offset are intervals
    ("-x > -1", "x < 1", True), ("-x > -1", "x > 1", False), ("2x > 2", "x > 1", True),
    ("2x > 2", "(1,\\infty)", True), ("2x \\geq 2", "[1,\\infty)", True), ("2x \\ge 2", "(1,\\infty)", False),
    ("-3x \\le 6", "x \\ge -2", True), ("-3x \u2264 6", "[-2, \\infty)", True), ("-3x \\leq 6", "x > -2", False),
    ("3x-1 < 5", "x < 2", True), ("-1 < 2x+1 \\le 3", "(-1, 1]", True), ("-1 < 2x+1 \\le 3", "[-1, 1)", False),
    ("-1 < -x \\le 3", "[-3, 1)", True), ("\\frac{1}{2}x > 1", "x > 2", True), ("x/2 \\ge 1", "x \\ge 2", True),
    ("4 < 2x", "x > 2", True), ("2y > 2", "x > 1", False), ("0x > 1", "x > 1", False),
    ("2x > \\sqrt2", "x > \\frac{\\sqrt2}{2}", True),
    # A value with its approximation; chains of equalities, every link must hold
    ("\\frac{\\sqrt3}{3} \\approx 0.577", "\\frac{\\sqrt3}{3}", True),
    ("\\frac{\\sqrt3}{3} \\approx 0.577", "0.577", True),
    ("\\frac{\\sqrt3}{3} \\approx 0.5", "\\frac{\\sqrt3}{3}", False),  # a wrong rounding is a wrong chain
    ("\\pi \\sim 3.14", "\\pi", True), ("\\pi \u2248 3.15", "\\pi", False),
    ("x \\approx 0.577", "\\frac{\\sqrt3}{3}", True),
    ("\\frac{1}{3} \\approx 0.33", "0.33", False),  # the value is 1/3, and 0.33 is too coarse for it
    ("x = 3 + 8 = 11", "11", True), ("x = 3 + 8 = 12", "12", False), ("3 + 3 = 2", "2", False),
    ("3+8=11", "11", True), ("y = 3 + 8 = 11", "x = 11", False), ("x = 2 + 2 = 4 = 2^2", "4", True),
    ("a = \\frac{6}{4} = \\frac{3}{2} \\approx 1.5", "\\frac32", True),
    # Mixed numbers written with a space: 1 1/2 is 3/2, never 11/2
    ("1 1/2", "3/2", True), ("1 1/2", "11/2", False), ("-2 1/3", "-\\frac73", True), ("1 3/2", "13/2", False),
    ("2 1/2 \\text{ hours}", "2.5", True), ("12 3/4", "\\frac{51}{4}", True),
    # Repeats: a set is its distinct elements; an answer list keeps them (see the module docstring)
    ("\\{1,1,2\\}", "\\{1,2\\}", True), ("\\{1,1,2\\}", "\\{1,2,3\\}", False), ("\\{1, 2\\}", "1, 1, 2", True),
    ("\\{\\{1\\},\\{1\\},\\{2\\}\\}", "\\{\\{2\\},\\{1\\}\\}", True), ("1, 1, 2", "1, 2", False),
    ("\\{0.5, \\frac12\\}", "\\{\\frac12\\}", True),
    # Assignments of tuples and labelled quantities
    ("(p,q)=(3,2)", "(3,2)", True), ("(p,q)=(3,2)", "(2,3)", False), ("(x, y) = (1, -1)", "(1,-1)", True),
    ("|AB| = 1", "1", True), ("|AB| = 2", "1", False), ("AB = 5", "5", True), ("x_1 = 4", "4", True),
    ("x_{1} = 4", "5", False), ("P(A) = \\frac{1}{3}", "\\frac13", True), ("P(A) = \\frac{1}{2}", "\\frac13", False),
    ("m_{\\max}=n^2-n-1", "n^2-n-1", True), ("\\frac{d x}{d t}=k x-a", "kx-a", True),
    ("\\frac{dx}{dt}=kx-a", "kx+a", False), ("MR=SRMC", "SRMC", True), ("MR=SRMC", "LRMC", False),
    ("\\angle ABC = 90^\\circ", "90", True),
    ("a+b=7", "7", False),  # the left side is an expression, not a label: an equation, equal only to equations
    ("x=5", "y=5", False),
    ("\\theta = \\frac{\\pi}{3}", "\\frac{\\pi}{3}", True), ("\\Gamma = 2", "2", True),
    ("\\pi = 3", "3", False),  # \pi is a constant, not a label: a false chain
    # Percent as a word (never rescaled), "or" without spaces, clock times
    ("28 percent", "28", True), ("28 pct", "28\\%", True), ("28\\text{ percent}", "28", True),
    ("0.28", "28 percent", False), ("28 percent", "29", False),
    ("(11,7)or(7,11)", "(7,11), (11,7)", True), ("(11,7)or(7,11)", "(11,7)", False), ("3or5", "5 \\text{ or } 3", True),
    ("20:34", "8:34 p.m.", True), ("20:34:00", "8:34 pm", True), ("20:34", "8:34 a.m.", False),
    ("20:34:05", "20:34", False), ("12:05 a.m.", "0:05", True), ("08:15", "8:15 \\text{ a.m.}", True),
    ("12:30 p.m.", "12:30", True), ("23:59", "11:59 PM", True), ("13:00", "1:00 a.m.", False),
    # Sums, products, matrix arithmetic: evaluated when bounded and small, else compared structurally
    ("\\sum_{k=1}^{10} k", "55", True), ("\\sum_{k=1}^{10} k", "56", False), ("\\sum_{k=1}^{4} k^2", "30", True),
    ("\\prod_{k=1}^{5} k", "5!", True), ("\\prod_{j=2}^{4} (j-1)", "6", True), ("\\sum^{3}_{k=1} k", "6", True),
    ("\\sum_{k=1}^{3}\\sum_{j=1}^{2} jk", "18", True), ("\\sum_{k=0}^{3} 2^k", "15", True),
    ("\\sum_{k=1}^{10} k = 55", "55", True), ("\\sum_{k=1}^{10} k = 56", "56", False),
    ("\\sum_{k=1}^{n} k", "\\sum_{j=1}^{n} j", True), ("\\sum_{k=1}^{n} k", "\\sum_{k=1}^{n} k^2", False),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\4\\end{pmatrix}", True),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\5\\end{pmatrix}", False),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}\\begin{pmatrix}1\\\\1\\end{pmatrix}",
     "\\begin{pmatrix}3\\\\7\\end{pmatrix}", True),
    ("\\begin{bmatrix}1&1\\\\0&1\\end{bmatrix}^{3}",
     "\\begin{pmatrix}1&3\\\\0&1\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}+\\begin{pmatrix}3\\\\4\\end{pmatrix}",
     "\\begin{pmatrix}4\\\\6\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}^{-1}", "\\begin{pmatrix}-2&1\\\\3/2&-1/2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\end{pmatrix}^T", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", False),
]


# A second, independently written table of the same classes (written against another implementation of
# these rules; both tables must pass).
SECOND_FORM_CASES = [
    # Inequalities whose variable has a coefficient, a sign or an offset: solved for the variable
    ("-x > -1", "x < 1", True),
    ("2x > 2", "x > 1", True),
    ("2x > 2", "(1,\\infty)", True),
    ("-2x \\le 4", "x \\ge -2", True),
    ("-2x \\leq 4", "[-2, \\infty)", True),
    ("3x+1 \\geq 7", "x \\ge 2", True),
    ("\\frac{1}{2}x < 3", "x<6", True),
    ("x/2 < 1", "x < 2", True),
    ("6 < 3x", "x > 2", True),
    ("2 < 2x \\le 6", "(1, 3]", True),
    ("-4 \\le -2x < 2", "(-1, 2]", True),
    ("3x > 6", "x > 3", False),
    ("-x > -1", "x > 1", False),     # dividing by -1 flips the relation
    ("2x \\ge 2", "x > 1", False),   # strict and non-strict differ
    ("2y > 2", "x > 1", False),      # another variable
    # A value with its approximation; true equality chains (every link must hold)
    ("\\frac{\\sqrt3}{3} \\approx 0.577", "\\frac{\\sqrt3}{3}", True),
    ("\\frac{\\sqrt{3}}{3}\\approx 0.58", "\\frac{\\sqrt3}{3}", True),
    ("\\sqrt2 \\sim 1.414", "\\sqrt{2}", True),
    ("\\pi \\approx 3.14", "\\pi", True),
    ("0.577", "\\frac{\\sqrt3}{3} \\approx 0.577", True),
    ("\\frac{\\sqrt3}{3} \\approx 0.9", "\\frac{\\sqrt3}{3}", False),  # a false approximation
    ("\\frac{\\sqrt3}{3} \\approx 0.578", "\\frac{\\sqrt3}{3}", False),  # a wrong rounding
    ("x = 3 + 8 = 11", "11", True),
    ("3+3=6", "6", True),
    ("2 \\cdot 3 + 1 = 7 = \\frac{14}{2}", "7", True),
    ("3 + 3 = 2", "2", False),
    ("x = 2 + 2 = 5", "5", False),
    ("x = 2 + 2 = 5", "4", False),
    ("2+2=4=5", "4", False),         # every link, not just the first
    # Mixed numbers written with a space in plain text
    ("1 1/2", "3/2", True),
    ("1 1/2", "\\frac{3}{2}", True),
    ("2 3/4", "2.75", True),
    ("-1 1/2", "-\\frac32", True),
    ("1 1/2", "11/2", False),
    ("1 1/2", "\\frac{11}{2}", False),
    ("2 5/2", "25/2", False),        # not a proper fraction: never read as 25/2
    # Sets ignore repeated elements; answer lists count them (a repeat is an extra answer)
    ("\\{1,1,2\\}", "\\{1,2\\}", True),
    ("\\{2,1\\}", "\\{1,2,2\\}", True),
    ("\\{\\frac12, 0.5, 3\\}", "\\{3, \\frac{1}{2}\\}", True),
    ("\\{\\{1\\},\\{1\\},\\{2\\}\\}", "\\{\\{2\\},\\{1\\}\\}", True),
    ("\\{1,3\\}", "\\{1,1,2\\}", False),
    ("\\{1,2,3\\}", "\\{1,2\\}", False),
    ("1, 1, 2", "1, 2", False),
    # Labelled quantities and assignments of tuples, in the prediction or the gold
    ("(p,q)=(3,2)", "(3,2)", True),
    ("(3,2)", "(p, q) = (3, 2)", True),
    ("(p,q)=(2,3)", "(3,2)", False),
    ("|AB| = 1", "1", True),
    ("AB = 5", "5", True),
    ("\\overline{AB} = 5", "5", True),
    ("\\angle ABC = 30", "30^\\circ", True),
    ("a+b=7", "7", False),          # an expression on the left is not a label (reward.py, rule 6)
    ("x_1 = 4", "4", True),
    ("P(A) = \\frac12", "0.5", True),
    ("f(2) = 9", "9", True),
    ("m_{\\max} = n^2 - n - 1", "n^2-n-1", True),
    ("|AB| = 2", "1", False),
    ("2x = 6", "6", False),          # an equation with an unknown, not a label
    ("2x = 6", "3", False),
    ("x+y=1", "2x+2y=2", True),      # equations keep their own rule
    ("x=5", "y=5", False),
    # Percent written as a word (no x100 either way), "or" without spaces, 24-hour and seconds times
    ("28 percent", "28", True),
    ("28 pct", "28\\%", True),
    ("28 per cent", "28", True),
    ("28\\text{ percent}", "28", True),
    ("28 percent", "0.28", False),
    ("(11,7)or(7,11)", "(7,11), (11,7)", True),
    ("3or5", "5 \\text{ or } 3", True),
    ("(11,7)or(7,11)", "(11,7)", False),
    ("\\text{for}", "f", False),
    ("20:34", "8:34 p.m.", True),
    ("20:34:00", "20:34", True),
    ("8:34 PM", "20:34", True),
    ("8:34pm", "20:34:00", True),
    ("12:15 a.m.", "0:15", True),
    ("12:00 p.m.", "12:00", True),
    ("08:05", "8:05 a.m.", True),
    ("8:34 a.m.", "20:34", False),
    ("20:34:30", "20:34", False),
    ("13:00 p.m.", "1:00 p.m.", False),  # not a time: left as written
    # Sums, products and matrix arithmetic: evaluated when small, compared as written otherwise
    ("\\sum_{k=1}^{10} k", "55", True),
    ("\\sum_{k=1}^{4} k^2", "30", True),
    ("\\prod_{k=1}^{5} k", "120", True),
    ("\\sum_{i=0}^{3} 2^i", "15", True),
    ("\\sum_{k=1}^{n} k", "\\sum_{k=1}^{n} k", True),
    ("\\sum_{k=1}^{10} k", "56", False),
    ("\\sum_{k=1}^{10} k = 55", "55", True),
    ("\\sum_{k=1}^{10} k = 56", "56", False),
    ("\\sum_{k=1}^{n} k", "\\frac{n(n+1)}{2}", False),  # not evaluated symbolically: compared as written
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}+\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}",
     "\\begin{pmatrix}2&2\\\\3&5\\end{pmatrix}", True),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\4\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&1\\\\0&1\\end{pmatrix}^{3}", "\\begin{pmatrix}1&3\\\\0&1\\end{pmatrix}", True),
    ("2\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\5\\end{pmatrix}", False),
    ("\\begin{pmatrix}1&2\\end{pmatrix}+\\begin{pmatrix}1&0\\end{pmatrix}", "\\begin{pmatrix}2\\\\2\\end{pmatrix}", False),
]


@pytest.mark.parametrize("prediction, gold, expected", ANSWER_FORM_CASES + SECOND_FORM_CASES,
                         ids=[f"{p!r}~{g!r}" for p, g, _ in ANSWER_FORM_CASES + SECOND_FORM_CASES])
def test_answer_forms(prediction, gold, expected):
    assert answers_match(prediction, gold) is expected
    assert answers_match(gold, prediction) is expected


@pytest.mark.parametrize("prediction, gold", [
    ("\\sum_{k=1}^{10^{100}} k", "5"),  # too many terms: kept unevaluated, never summed
    ("\\prod_{k=1}^{10^{100}} k", "1"),
    ("\\sum_{k=1}^{1000}\\sum_{j=1}^{1000} jk", "1"),  # nested: the term budget is shared
    ("\\sum_{k=1}^{9}" * 60 + "k", "1"),  # deeply nested small series: the budget counts every parse
    ("\\sum_{k=1}^{100} 9^{9^{k}}", "1"),  # each term meets the power guard as a number
    ("\\begin{pmatrix}1&1\\\\0&1\\end{pmatrix}^{10^{9}}", "\\begin{pmatrix}1&1000000000\\\\0&1\\end{pmatrix}"),
])
def test_huge_series_and_matrix_powers_are_refused_quickly(prediction, gold):
    start = time.monotonic()
    graded = grade_batch(["\\boxed{" + prediction + "}"], [gold], timeout=LIMIT)
    assert graded["correct"] == [False] and graded["timeouts"] == [False]
    assert time.monotonic() - start < LIMIT + SLACK


def test_huge_series_equal_only_to_themselves():
    series = "\\prod_{k=1}^{10^{100}} (k+1)"
    assert answers_match(series, "\\prod_{j=1}^{10^{100}} (j+1)", timeout=LIMIT)
    assert not answers_match(series, "\\prod_{j=1}^{10^{100}} (j+2)", timeout=LIMIT)



def test_huge_sums_and_products_return_within_the_deadline():
    start = time.monotonic()
    graded = grade_batch(["\\boxed{\\sum_{k=1}^{10^{9}} k}", "\\boxed{\\prod_{k=1}^{10^{12}} k}",
                          "\\boxed{\\sum_{k=1}^{10^{100}} k^{k}}",
                          "\\boxed{\\begin{pmatrix}2&1\\\\1&2\\end{pmatrix}^{1000000}}"],
                         ["500000000500000000", "0", "1", "1"], timeout=LIMIT)
    assert graded["correct"] == [False, False, False, False]
    assert time.monotonic() - start < LIMIT + SLACK

@pytest.mark.parametrize("answer, normalized", [
    (" $5.$ ", "5"), ("\\text{(B)}", "(B)"), ("10,\\!080", "10080"), ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("90^{\\circ}", "90"), ("x \\in [0, 1)", "[0,1)"), ("\\sin x", "\\sin x"),
])
def test_normalize_answer(answer, normalized):
    assert reward.normalize_answer(answer) == normalized


def test_table_is_large_enough():
    assert len(EQUIVALENCE_CASES) >= 80


def test_cheap_comparisons_need_no_worker():
    """The common case (strings, numbers, tuples of numbers) is decided in the calling process."""
    for prediction, gold in [("5", "5.0"), ("\\frac12", "0.5"), ("(1, 2)", "(1,2.0)"), ("3, 2", "2, 3"),
                             ("\\text{(B)}", "B"), ("x=5", "5")]:
        assert reward._quick_verdict(prediction, gold) is True
    assert reward._quick_verdict("\\sqrt8", "2\\sqrt2") is None  # needs sympy: a worker decides


#### Safety: hostile input returns within the limit, is judged wrong, and runs no code

HOSTILE_ANSWERS = {
    "exponent tower": "9^{9^{9^{9}}}",
    "huge factorial": "100000!",
    "5000-deep braces": "{" * 5000 + "1" + "}" * 5000,
    "100,000 characters": "1" * 100_000,
    "python code": "__import__('os').system('touch PWNED')",
}


def pwned_files(tmp_path):
    """Where a `touch PWNED` would land: our directories and the grader workers' working directories."""
    places = {tmp_path, Path.cwd(), REPO}
    for worker in reward._workers:
        try:
            places.add(Path(os.readlink(f"/proc/{worker['process'].pid}/cwd")))
        except OSError:
            pass
    return [place / "PWNED" for place in places if (place / "PWNED").exists()]


@pytest.mark.parametrize("side", ["answer", "gold"])
@pytest.mark.parametrize("name", list(HOSTILE_ANSWERS))
def test_hostile_input(name, side, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hostile = HOSTILE_ANSWERS[name]
    response, gold = ("\\boxed{" + hostile + "}", "5") if side == "answer" else ("\\boxed{5}", hostile)
    start = time.monotonic()
    graded = grade_batch([response], [gold], timeout=LIMIT)
    assert time.monotonic() - start < LIMIT + SLACK
    assert graded["correct"] == [False]
    assert graded["timeouts"] == [False]  # stopped by a size guard or the parser, not by the deadline
    assert not pwned_files(tmp_path)


def test_code_in_answers_reaches_the_parser_and_runs_nothing(tmp_path, monkeypatch):
    """The code string is not stopped by a cheap rule: it really goes through sympy in a worker."""
    monkeypatch.chdir(tmp_path)
    code = HOSTILE_ANSWERS["python code"]
    assert reward._quick_verdict(code, "x") is None
    graded = grade_batch(["\\boxed{" + code + "}", "\\boxed{x}"], ["x", code], timeout=LIMIT)
    assert graded["correct"] == [False, False]
    assert graded["timeouts"] == [False, False]
    assert not pwned_files(tmp_path)


def test_grader_never_evaluates_text():
    """No eval, exec, compile, sympify, S(...) or parse_expr anywhere in reward.py."""
    forbidden = {"eval", "exec", "compile", "sympify", "parse_expr", "S", "parse_latex", "__import__"}
    called = set()
    for node in ast.walk(ast.parse((REPO / "reward.py").read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            called.add(node.func.id)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            is_regex = isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
            called.add("re.compile" if is_regex else node.func.attr)  # re.compile builds regexes only
    assert "Fraction" in called and "re.compile" in called  # the walk does see calls
    assert not called & forbidden


def test_importing_reward_does_not_import_sympy():
    """data/problems.py imports reward; sympy is only loaded by the grading workers."""
    code = "import sys, reward; print('sympy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def slow_comparison():
    """Passes every size guard but takes sympy many seconds: each term needs ~30,000-digit arithmetic."""
    return "+".join("\\sin(2^{%d}x)" % (99999 - k) for k in range(55)), "0"


def test_overrunning_comparison_is_killed_and_counted():
    slow_answer, slow_gold = slow_comparison()
    responses = ["\\boxed{" + slow_answer + "}", "\\boxed{\\sqrt{8}}", "\\boxed{(x-1)(x+1)}",
                 "\\boxed{\\frac{1}{\\sqrt3}}"]
    golds = [slow_gold, "2\\sqrt2", "x^2-1", "\\frac{\\sqrt3}{3}"]
    grade_batch(responses[1:], golds[1:], num_workers=2)  # start the pool outside the timed part
    pids_before = {worker["process"].pid for worker in reward._workers}
    start = time.monotonic()
    graded = grade_batch(responses, golds, timeout=LIMIT, num_workers=2)
    elapsed = time.monotonic() - start
    assert graded["timeouts"] == [True, False, False, False]
    assert graded["correct"] == [False, True, True, True]  # the other worker graded the rest meanwhile
    assert elapsed < LIMIT + SLACK
    killed = pids_before - {worker["process"].pid for worker in reward._workers}
    assert len(killed) == 1  # one worker was killed and replaced ...
    with pytest.raises(ProcessLookupError):
        os.kill(killed.pop(), 0)  # ... and is really gone
    assert answers_match("\\sqrt{12}", "2\\sqrt3")  # the pool still works


def test_workers_are_not_forked():
    """The training process holds threads (vLLM); a forked copy of it could deadlock."""
    assert reward._process_context().get_start_method() in ("forkserver", "spawn")


#### Reward schemes

RIGHT, WRONG, NO_BOX = "so \\boxed{5}.", "so \\boxed{6}.", "so the answer is 5."
TRUNCATED = "first \\boxed{5}, but let me check that: \\boxed{\\frac{10}{"  # cut off inside the last box
HEDGED, REPEATED = "\\boxed{5} or maybe \\boxed{6}", "\\boxed{5}, that is, \\boxed{5.0}"
BLANKS = "fill in $\\boxed{\\phantom{2}} + \\boxed{\\phantom{2}} = 9$: so \\boxed{5}"  # boxes drawn as blanks


@pytest.mark.parametrize("scheme, response, expected", [
    ("correct", RIGHT, 1.0), ("correct", WRONG, 0.0), ("correct", NO_BOX, 0.0), ("correct", TRUNCATED, 0.0),
    ("simplerl", RIGHT, 1.0), ("simplerl", WRONG, -0.5), ("simplerl", NO_BOX, -1.0), ("simplerl", TRUNCATED, -1.0),
    ("format", RIGHT, 1.0), ("format", WRONG, 0.0), ("format", NO_BOX, -1.0), ("format", TRUNCATED, -1.0),
    ("format", HEDGED, -1.0), ("format", REPEATED, 1.0), ("format", BLANKS, 1.0), ("correct", HEDGED, 0.0),
])
def test_reward_schemes(scheme, response, expected):
    assert grade_response(response, "5", scheme)[2] == expected


def test_unknown_scheme_and_mismatched_lengths_are_errors():
    with pytest.raises(ValueError):
        grade_batch([RIGHT], ["5"], "bogus")
    with pytest.raises(ValueError):
        grade_batch([RIGHT, WRONG], ["5"])


def test_grade_batch_shapes():
    graded = grade_batch([RIGHT, WRONG, NO_BOX, "\\boxed{2\\sqrt2}"], ["5", "5", "5", "\\sqrt8"], "simplerl")
    assert graded == {"pred": ["5", "6", None, "2\\sqrt2"], "correct": [True, False, False, True],
                      "reward": [1.0, -0.5, -1.0, 1.0], "timeouts": [False] * 4}
    assert grade_response(RIGHT, 5) == ("5", True, 1.0)  # a numeric gold is fine


#### Command line

def run_cli(tmp_path, lines, *arguments):
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(line + "\n" for line in lines))
    result = subprocess.run([sys.executable, str(REPO / "reward.py"), "--input", str(source),
                             "--output", str(target), *arguments], capture_output=True, text=True, timeout=120)
    return result, target


def test_cli_grades_a_file(tmp_path):
    rows = [{"id": 1, "response": RIGHT, "gold": "5"}, {"id": 2, "response": NO_BOX, "gold": 5},
            {"id": 3, "response": "\\boxed{\\frac{\\sqrt2}{2}}", "gold": "\\frac{1}{\\sqrt2}", "extra": [1]}]
    result, target = run_cli(tmp_path, [json.dumps(row) for row in rows], "--reward-scheme", "simplerl")
    assert result.returncode == 0, result.stderr
    graded = [json.loads(line) for line in target.read_text().splitlines()]
    assert [row["id"] for row in graded] == [1, 2, 3] and graded[2]["extra"] == [1]
    assert [(row["pred"], row["correct"], row["reward"]) for row in graded] == [
        ("5", True, 1.0), (None, False, -1.0), ("\\frac{\\sqrt2}{2}", True, 1.0)]
    assert "graded 3 pairs" in result.stderr and "accuracy 0.6667" in result.stderr
    assert "timeouts 0" in result.stderr and "pairs/s" in result.stderr


@pytest.mark.parametrize("bad_line, message", [
    ("not json", "not valid JSON"),
    (json.dumps({"gold": "5"}), "'response'"),
    (json.dumps({"response": RIGHT}), "'gold'"),
])
def test_cli_reports_bad_lines_with_their_number(tmp_path, bad_line, message):
    result, _ = run_cli(tmp_path, [json.dumps({"response": RIGHT, "gold": "5"}), bad_line])
    assert result.returncode != 0
    assert "in.jsonl:2:" in result.stderr and message in result.stderr


#### Real data: gold self-consistency and the stored verdicts of 800 real responses

def solution_text(row):
    solution = row.get("solution")
    return "\n".join(solution) if isinstance(solution, list) else solution


def test_gold_self_consistency():
    """For every eval set whose rows carry a worked solution with a box (math500, aime24, minerva_math),
    the solution's last box, graded against the row's answer, must be judged right. minerva_math rows
    have no separate answer: like the Qwen2.5-Math harness, we take the box itself as the gold, so there
    the check is that every gold answer is judged equal to itself. (olympiadbench solutions have no
    box, so it cannot take part.)"""
    eval_dir = needs_data("eval")
    responses, golds, names = [], [], []
    for path in sorted(eval_dir.glob("*/*.json*")):
        text = path.read_text()
        is_array = text.lstrip().startswith("[")
        rows = json.loads(text) if is_array else [json.loads(line) for line in text.splitlines() if line.strip()]
        for row in rows:
            solution = solution_text(row)
            if not isinstance(solution, str) or extract_boxed(solution) is None:
                continue
            answer = row.get("answer", extract_boxed(solution))
            responses.append(solution)
            golds.append(answer)
            names.append(path.parent.name)
    assert {"math500", "aime24", "minerva_math"} <= set(names)
    graded = grade_batch(responses, golds)
    failures = [(name, gold, prediction) for name, gold, prediction, correct
                in zip(names, golds, graded["pred"], graded["correct"]) if not correct]
    for name, gold, prediction in failures:
        print(f"{name}: gold {gold!r}, last box of the solution {prediction!r}")
    print(f"{len(responses) - len(failures)} of {len(responses)} solutions consistent with their gold")
    assert len(failures) <= 0.005 * len(responses)


# Every disagreement with the stored verdicts, keyed "problem idx/sample", with the reason we are right.
KNOWN_DISAGREEMENTS = {
    "72/7": "gold '10{,}000', boxed '10000': the stored False is a false negative of the Qwen2.5-Math "
            "harness, which does not read '{,}' as a thousands separator. The response computes "
            "(49,994 + 20,006) / 7 = 10,000 and is right.",
}


def test_agreement_with_stored_verdicts():
    path = needs_data("samples/eval_rm_maj_example/math_cot_100.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    keys, responses, golds, stored = [], [], [], []
    for row in rows:
        for sample, (response, score) in enumerate(zip(row["code"], row["score"])):
            keys.append(f"{row['idx']}/{sample}")
            responses.append(response)
            golds.append(row["gt"])
            stored.append(score)
    assert len(responses) == 800
    graded = grade_batch(responses, golds)
    disagreements = {key: (gold, prediction, score) for key, gold, prediction, score, correct
                     in zip(keys, golds, graded["pred"], stored, graded["correct"]) if correct != score}
    for key, (gold, prediction, score) in disagreements.items():
        print(f"{key}: gold {gold!r}, boxed {prediction!r}, stored {score}: "
              f"{KNOWN_DISAGREEMENTS.get(key, 'UNEXPLAINED')}")
    assert sum(graded["timeouts"]) == 0
    assert len(disagreements) <= 1
    assert set(disagreements) <= set(KNOWN_DISAGREEMENTS)


#### Optional backend

def test_math_verify_backend():
    pytest.importorskip("math_verify", reason="math-verify is optional (pip install math-verify)")
    graded = grade_batch([RIGHT, WRONG, "\\boxed{\\frac{1}{2}}"], ["5", "5", "0.5"], grader="math-verify")
    assert graded["correct"] == [True, False, True]
