"""qpk.h's `#define` constants, read from qpk.h itself: the C decoder is their one home.

`--to c` sizes what it writes by them (qpk_unpack's workspace), and tests/test_export_c.py holds
every one that restates a rule of FORMAT.md to the value spec.py gives it. qpk.h stays a
hand-written file a firmware author reads top to bottom, with each constant's reason beside it;
generating its constants from spec.py would put a template and a build step between that reader
and the code, and the few constants it shares with spec.py are checked just as surely this way.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Callable
from importlib import resources

DECODER = "qpk.h"  # shipped beside this module as package data, copied into `--to c` output folders

_DEFINE = re.compile(r"^#define[ \t]+(QPK\w*)(?:[ \t]+(.*?))?[ \t]*(?:/\*.*\*/)?[ \t]*$", re.M)
# C spellings an integer constant of qpk.h uses, made Python: UINT64_C(1) -> 1, 16u -> 16
_C_INT = ((re.compile(r"\bUINT64_C\((\w+)\)"), r"\1"), (re.compile(r"\b(\d+)[uU]?[lL]{0,2}\b"), r"\1"))
_OPS: dict[type, Callable[[int, int], int]] = {ast.LShift: operator.lshift, ast.Add: operator.add,
                                                ast.Sub: operator.sub, ast.Mult: operator.mul}


def _value(node: ast.expr, where: str) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand, where)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_value(node.left, where), _value(node.right, where))
    raise ValueError(f"qpk.h: cannot read {where} as an integer constant")


def parse_defines(source: str) -> dict[str, int]:
    """Every `#define QPK...` of a C source that has a value, as an integer.

    Values are integer constant expressions of literals (suffix u, UINT64_C(), parentheses, unary
    minus, <<, +, -, *); include guards and other defines without a value are left out.

    Raises:
        ValueError: a value is anything else (extend this reader, or give the define no value).
    """
    out: dict[str, int] = {}
    for name, text in _DEFINE.findall(source):
        if not text:
            continue
        expr, where = text, f"{name} = {text!r}"
        for pattern, repl in _C_INT:
            expr = pattern.sub(repl, expr)
        try:
            tree = ast.parse(expr, mode="eval")
        except SyntaxError:
            raise ValueError(f"qpk.h: cannot read {where} as an integer constant") from None
        out[name] = _value(tree.body, where)
    return out


@functools.cache
def defines() -> dict[str, int]:
    """qpk.h's integer constants by name (read once)."""
    return parse_defines(source())


def source() -> str:
    """The text of the qpk.h this package ships."""
    return resources.files(__package__).joinpath(DECODER).read_text(encoding="utf-8")


def define(name: str) -> int:
    """One of qpk.h's integer constants.

    Raises:
        KeyError: qpk.h defines no such constant.
    """
    return defines()[name]
