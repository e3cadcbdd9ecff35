"""Which tensors get quantized, at how many bits, along which axis: decided from each tensor's role.

The default quantizes what carries the bulk of a model's bytes and tolerates rounding: convolution
kernels, dense and recurrent matrices and embedding tables. It keeps in float what is tiny but
sensitive: biases (added after the accumulation, their error is not averaged away), normalization
parameters (a quantized variance can flip sign or approach zero and blow up the output), and any
other constant, which is often a shape-like value or an elementwise coefficient.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from qpack.converter.quant import CLIPS, get_quantizer
from qpack.converter.quant.rdo import check as rdo_check
from qpack.formats.errors import OptionError
from qpack.formats.model import Role, Weight
from qpack.formats.qpk import Grouping

if TYPE_CHECKING:
    from qpack.converter.export.native import Native

QUANTIZED_ROLES = frozenset({Role.KERNEL, Role.MATRIX, Role.RECURRENT, Role.EMBEDDING})
MIN_ELEMENTS = 16  # below this the parameters would cost more than the float values they replace
MIN_GROUP, MAX_GROUP = 16, 1024
PARAM_DTYPES = ("auto", "fp16", "fp32")
ALREADY = "already quantized"  # the reason an integer weight with its own scales is kept, as reports show it
SPARSE_WIDER = "a sparse weight"  # the start of why a sparse weight takes more bits than asked (reports count them)


@dataclass(frozen=True)
class Decision:
    """What happens to one weight: quantized at `bits` along `axis`, or kept with a `reason`."""

    quantize: bool
    bits: int = 0
    axis: int | None = None
    reason: str = ""
    block: int | None = None  # blocks of this many weights along `axis` share parameters
    dtypes: dict[str, str] | None = None  # parameter storage dtypes asked for (None: the scheme's defaults)
    scheme: str | None = None  # None: the policy's
    clip: str | None = None  # None: the policy's
    rdo: float | None = None  # lambda of rate-aware rounding; None: the policy's
    why: str = ""  # how an allocation chose this setting
    # the blocks' `dtypes` are the target's only ones (TFLite's float16 block scales): where they cannot
    # hold a tensor's parameters (a block of weights so small its scale would be 0), it goes per channel
    strict: bool = False

    @property
    def grouping(self) -> Grouping:
        return Grouping(self.axis, self.block)

    def per_channel(self, w: Weight) -> Decision:
        """The fallback of a block decision whose dtypes the target fixes (`strict`)."""
        return replace(self, axis=w.axis if len(w.shape) > 1 else None, block=None, dtypes=None, strict=False)

    def lam(self, policy_rdo: float) -> float:
        """The rate-aware rounding's lambda: the decision's own, else the policy's."""
        return policy_rdo if self.rdo is None else self.rdo


@dataclass(frozen=True)
class Policy:
    """The user's options, applied tensor by tensor."""

    scheme: str
    bits: int
    per_channel: bool = False
    keep: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    bits_for: tuple[tuple[str, int], ...] = ()
    clip: str = "minmax"  # or "mse": per-group range shrunk to the least squared error
    group_size: int | None = None  # blocks of this many weights along each tensor's reduction axis
    param_dtype: str = "auto"  # float parameters as fp16 or fp32; auto: fp16 for blocks (and per channel in goals), fp32 otherwise
    rdo: float = 0.0  # lambda of rate-aware rounding (squared steps per bit); 0: round to nearest
    plan: tuple[tuple[str, Decision], ...] = ()  # per-tensor settings an allocation chose, by key
    target: str = "qpk"  # the export target the file is made for (`--for`): its goals allocate only what it runs
    export_cosine: float | None = None  # a full-integer target's share of a cosine goal: its export's --min-cosine

    def __post_init__(self) -> None:
        if self.group_size is not None and not MIN_GROUP <= self.group_size <= MAX_GROUP:
            raise OptionError(f"--group-size must lie in {MIN_GROUP}..{MAX_GROUP}, not {self.group_size}")
        if self.param_dtype not in PARAM_DTYPES:
            raise OptionError(f"--param-dtype must be one of {', '.join(PARAM_DTYPES)}, not {self.param_dtype!r}")
        if self.clip not in CLIPS:
            raise OptionError(f"unknown clipping {self.clip!r}, expected one of {', '.join(CLIPS)}")
        scheme = get_quantizer(self.scheme)
        scheme.check_bits(self.bits)
        if self.group_size is not None and not scheme.spec().blocks:
            raise OptionError(f"scheme '{self.scheme}' searches its codes in the tensor's order: it takes a scale per tensor "
                              "or per channel, not --group-size")
        rdo_check(scheme, self.rdo)
        for pattern, bits in self.bits_for:
            if not pattern:
                raise OptionError("a --bits-for pattern is empty")
            scheme.check_bits(bits)

    def options(self, codec: str = "raw") -> dict[str, Any]:
        """The options as recorded in the container and every report (one shape everywhere)."""
        out = {"scheme": self.scheme, "bits": self.bits, "per_channel": self.per_channel, "clip": self.clip, "codec": codec,
               "keep": list(self.keep), "include": list(self.include), "bits_for": [[p, b] for p, b in self.bits_for]}
        if self.group_size is not None or self.param_dtype != "auto":  # absent otherwise: same bytes as before blocks
            out.update(group_size=self.group_size, param_dtype=self.param_dtype)
        if self.rdo:  # absent otherwise, for the same reason
            out["rdo"] = self.rdo
        if self.target != "qpk":  # absent otherwise, for the same reason
            out["for"] = self.target
        if self.export_cosine is not None:
            out["export_min_cosine"] = self.export_cosine
        return out

    def decide(self, w: Weight) -> Decision:
        chosen = dict(self.plan).get(w.key)
        if chosen is not None:
            return chosen
        if not w.is_float:
            if w.role == Role.QUANTIZED:
                return Decision(False, reason=ALREADY + (f" ({w.note})" if w.note else ""))
            return Decision(False, reason=f"not float ({w.dtype})")
        if _matches(w, self.keep):
            return Decision(False, reason="kept by --keep")
        forced = _matches(w, self.include)
        if not forced:
            if w.role not in QUANTIZED_ROLES:
                return Decision(False, reason=f"{w.role.value} kept in float" + (f" ({w.note})" if w.note else ""))
            if w.size < MIN_ELEMENTS:
                return Decision(False, reason=f"only {w.size} elements")
        if w.size == 0:
            return Decision(False, reason="empty")
        bits = next((b for p, b in self.bits_for if _matches(w, (p,))), self.bits)
        if w.sparse and (sparse_bits := self._sparse_bits(w, bits)) != bits:
            return replace(self._decide_at(w, sparse_bits),
                           why=f"{SPARSE_WIDER}: {self.target} runs its values at {sparse_bits} bits, not {bits}")
        return self._decide_at(w, bits)

    def _decide_at(self, w: Weight, bits: int) -> Decision:
        axis = w.axis if self.per_channel and w.axis is not None and len(w.shape) > 1 else None
        block, fixed = None, None
        if self.group_size is not None:
            if w.reduction is not None and w.shape[w.reduction] > 1 and (fixed := self._blocks_run(w, bits)) is not False:
                axis, block = w.reduction, self.group_size
            elif w.axis is not None and len(w.shape) > 1:  # no sum to block (a depthwise kernel), or the target runs
                axis = w.axis  # no blocks there: per channel
        # float16 scales (the default with blocks); codebooks are float16 unless fp32 is asked for
        half = self.param_dtype == "fp16" or (self.param_dtype == "auto" and block is not None)
        dtypes = {"scale": "<f2"} if half else ({"centroids": "<f4"} if self.param_dtype == "fp32" else None)
        if isinstance(fixed, str):  # the target's block scales
            return Decision(True, bits=bits, axis=axis, block=block, dtypes={**(dtypes or {}), "scale": fixed}, strict=True)
        return Decision(True, bits=bits, axis=axis, block=block, dtypes=dtypes)

    def _native(self) -> Native | None:
        """What the policy's target runs natively (None: a file for the container alone)."""
        from qpack.converter.deploy import native_of  # deploy checks policies against targets

        return native_of(self)

    def _sparse_bits(self, w: Weight, bits: int) -> int:
        """The width a sparse weight takes: `bits`, or the narrowest above it the policy's target runs a
        sparse weight's values at (TFLite's DENSIFY spreads out int8 only)."""
        native = self._native()
        if native is None:
            return bits
        spec = get_quantizer(self.scheme).spec()
        taken = native.widths_for(w.role.value, sparse=True)
        if native.width(spec, bits) in taken:
            return bits
        return next((b for b in range(bits, spec.max_bits + 1) if native.width(spec, b) in taken), bits)

    def _blocks_run(self, w: Weight, bits: int) -> bool | str:
        """Whether the policy's target runs `w` in blocks along its reduction axis (a target that runs
        blocks for some roles only, TFLite's fully-connected weights, quantizes the others per channel):
        the one dtype it stores their scales in where it fixes it, else True or False."""
        native = self._native()
        if native is None:
            return True
        assert w.reduction is not None
        g = Grouping(w.reduction, self.group_size)
        width = native.width(get_quantizer(self.scheme).spec(), bits)
        if not native.takes_grouping(g, w.role.value, width, w.shape, w.sparse):
            return False
        return native.block_scales(g) or True


def _matches(w: Weight, patterns: tuple[str, ...]) -> bool:
    return any(fnmatchcase(w.name, p) or fnmatchcase(w.key, p) for p in patterns)


def parse_bits_for(items: list[str]) -> tuple[tuple[str, int], ...]:
    """Parse PATTERN=BITS items; the first matching pattern wins."""
    out = []
    for item in items:
        pattern, sep, bits = item.rpartition("=")
        if not sep or not bits.isdigit():
            raise OptionError(f"--bits-for expects PATTERN=BITS, got {item!r}")
        out.append((pattern, int(bits)))
    return tuple(out)
