"""`--for TARGET`: a file made for one export target, so that the target runs every tensor as stored.

The target's `Native` declaration (converter.export.native) is the only source: a fixed option it
cannot hold is refused before any work, in one line naming the option to change; the defaults move
to what it runs (sym where it wants symmetric weights, float32 scales where it stores them); a
goal's menus offer only the settings it takes, priced in the bytes it writes (allocate.options). The
container records the target (Policy.options), and `export --to` it widens nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from qpack.converter.export import QPK, Native, Stored, Target, target_named
from qpack.converter.export.native import RoleBlocks
from qpack.converter.policy import Policy
from qpack.formats.errors import OptionError
from qpack.formats.qpk import SCHEMES, Grouping, label_of, scheme_spec
from qpack.formats.registry import ADAPTERS, a_model, sniff


def check_format(target: str, model: Path) -> None:
    """A target takes models of its source formats only (a .qpk given to `report` is checked by what it holds).

    Raises:
        OptionError: `model` is of a format the target does not export.
    """
    t = target_named(target)
    fmt = sniff(model)
    if t is not None and fmt in ADAPTERS and fmt not in t.formats:
        raise OptionError(f"--for {target} exports {' or '.join(ADAPTERS[f].label + 's' for f in t.formats)}: "
                          f"{model} is {a_model(fmt)}")


def native_of(policy: Policy) -> Native | None:
    """What the policy's target runs natively; None for a file made for the container alone."""
    t = target_named(policy.target)
    return t.native if t is not None else None


def schemes_taken(n: Native) -> list[str]:
    return [s for s in SCHEMES if n.takes_scheme(s)]


def default_scheme(target: str, scheme: str, fallbacks: tuple[str, ...]) -> str:
    """`scheme` (the default) if the target takes it, else the first of `fallbacks` it takes."""
    t = target_named(target)
    if t is None or t.native.takes_scheme(scheme):
        return scheme
    return next((s for s in (*fallbacks, *schemes_taken(t.native)) if t.native.takes_scheme(s)), scheme)


def goal_schemes(target: str, schemes: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """The schemes a goal chooses among, kept to those the target takes (all of them if it takes none of these)."""
    t = target_named(target)
    if t is None or schemes is None:
        return schemes
    taken = tuple(s for s in schemes if t.native.takes_scheme(s))
    return taken or tuple(schemes_taken(t.native))


def default_codec(target: str, codec: str) -> str:
    """`codec` (the default) if the target keeps it or decodes every codec, else the first it keeps."""
    t = target_named(target)
    if t is None or t.native.codecs is None or codec in t.native.codecs:
        return codec
    return t.native.codecs[0]


def for_target(policy: Policy, codec: str, allocating: bool, scheme_given: bool) -> Policy:
    """The policy checked against its target: unchanged for `qpk`; else with float32 scales where the
    target stores them (float16 ones would lose precision and save nothing).

    Raises:
        OptionError: an unknown target, or a fixed option it cannot hold (one line naming the option).
    """
    t = target_named(policy.target)
    if t is None:
        return policy
    _refuse(t, policy, codec, allocating, scheme_given)
    if t.native.scale_bytes == 4 and policy.param_dtype == "auto" and not (policy.group_size and t.native.role_blocks):
        return replace(policy, param_dtype="fp32")  # (blocks it runs for some roles keep float16 scales there)
    return policy


def runs(policy: Policy, codec: str = "raw") -> bool:
    """Whether the target of a fixed policy (one scheme, width and grouping) runs it natively (`qpk`: always)."""
    t = target_named(policy.target)
    g = Grouping(0 if policy.group_size or policy.per_channel else None, policy.group_size)
    return t is None or t.native.takes(policy.scheme, policy.bits, g, codec)


def priced(policy: Policy, codec: str) -> tuple[Callable[[Any], int], Callable[[Any], int]] | None:
    """For a policy made for a target: a conversion's (converter.convert.ConvertResult) code and
    parameter bytes as the target stores them, and the size of its export; None for `qpk`."""
    t = target_named(policy.target)
    if t is None:
        return None
    def tensors(result: Any) -> list[Stored]:
        return [Stored(s.scheme, s.bits, s.shape, Grouping(s.axis, s.block), s.stored_bytes, s.param_bytes, codec, s.name, s.key,
                       s.role)
                for s in result.tensors]

    def stored(result: Any) -> int:
        return sum(t.native.price(s.scheme, s.bits, s.shape, s.grouping, s.code_bytes, s.param_bytes, s.codec, s.role)
                   for s in tensors(result))

    def size(result: Any) -> int:
        return t.size(result.skeleton_bytes, tensors(result), [(k.role, k.dtype, math.prod(k.shape)) for k in result.kept])

    return stored, size


def _refuse(t: Target, policy: Policy, codec: str, allocating: bool, scheme_given: bool) -> None:
    n, name = t.native, t.name
    if (scheme_given or not allocating) and not n.takes_scheme(policy.scheme):
        why = " (symmetric weights, no zero point)" if n.signed else ""
        raise OptionError(f"{name} runs {_either(schemes_taken(n))} codes{why}: use one of those, not --scheme {policy.scheme}")
    spec = scheme_spec(policy.scheme)
    if not allocating:
        fixed = [(policy.bits, f"--bits {policy.bits}"), *((b, f"--bits-for {p}={b}") for p, b in policy.bits_for)]
        for bits, option in fixed:
            if n.width(spec, bits) not in n.widths:
                good = [str(b) for b in range(spec.min_bits, spec.max_bits + 1) if n.width(spec, b) in n.widths]
                raise OptionError(f"{name} stores {policy.scheme} codes of {_either(good)} bits as they are; {option} "
                                  f"would be widened: use --bits {_either(good)}")
    rb = n.role_blocks if "block" not in n.groupings else None
    if policy.group_size is not None and rb is not None:
        _refuse_role_blocks(name, rb, policy, spec, allocating)
    elif policy.group_size is not None:
        if "block" not in n.groupings:
            raise OptionError(f"{name} quantizes per {_either([g for g in n.groupings if g != 'block'])}: drop --group-size")
        if n.blocks and policy.group_size not in n.blocks:
            raise OptionError(f"{name} takes blocks of {_either([str(b) for b in n.blocks])} weights, "
                              f"not --group-size {policy.group_size}")
    elif not allocating and ("channel" if policy.per_channel else "tensor") not in n.groupings:
        raise OptionError(f"{name} does not quantize per {'channel' if policy.per_channel else 'tensor'}: "
                          f"{'drop' if policy.per_channel else 'add'} --per-channel")
    if policy.param_dtype == "fp16" and "<f2" not in n.param_dtypes:
        raise OptionError(f"{name} stores float32 scales: drop --param-dtype fp16")
    if n.codecs is not None and codec not in n.codecs:
        raise OptionError(f"{name} keeps codes {_either([label_of(c) for c in n.codecs])}: not --codec {label_of(codec)}")


def _refuse_role_blocks(name: str, rb: RoleBlocks, policy: Policy, spec: Any, allocating: bool) -> None:
    """Fixed options blocks for some roles only cannot hold (the others go per channel, see Policy.decide);
    `policy` has a group size."""
    assert policy.group_size is not None
    if policy.group_size % rb.multiple:
        raise OptionError(f"{name} takes blocks of a multiple of {rb.multiple} weights, not --group-size {policy.group_size}")
    if not allocating and spec.integer_bits(policy.bits) not in rb.widths:
        raise OptionError(f"{name} runs blocks of {_either([f'{w}-bit' for w in rb.widths])} codes only: "
                          f"use --bits {_either([str(w) for w in rb.widths])}, or drop --group-size")
    if policy.param_dtype == "fp32" and rb.scale_dtype == "<f2":
        raise OptionError(f"{name} stores block scales as float16: drop --param-dtype fp32")


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


__all__ = ["QPK", "check_format", "default_codec", "default_scheme", "for_target", "goal_schemes", "native_of", "priced", "runs",
           "schemes_taken"]
