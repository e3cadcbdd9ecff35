"""What an export target runs natively, and the bytes it stores: what `convert --for` allocates within.

Each export target declares a `Native`: the stored settings it executes as they are (no widening, no
decoding at load time), and how it stores them (its integers packed at their type's width, scales
and zero points in its own dtypes). The same declaration answers three questions: whether a stored
tensor exports as it is (`runs`), whether a setting may enter a goal's menu (`takes`), and what a
setting costs in the export (`price`), so an allocation made for a target is priced in the bytes
that target writes and holds nothing it would widen.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from qpack.formats.qpk import SCHEMES, Grouping, SchemeSpec, TensorEntry, packed_size

GROUPINGS = ("tensor", "channel", "block")  # Grouping.kind
FLOAT_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}  # a float tensor's dtype: bytes per value


@dataclass(frozen=True)
class RoleBlocks:
    """Blocks a target runs for some roles only, where it takes no blocks otherwise: along a tensor's last
    axis (a fully-connected weight's input), of a multiple of `multiple` dividing it, at `widths`, one
    scale per block stored as `scale_dtype` (XNNPACK's blockwise int4 fully-connected kernel)."""

    roles: tuple[str, ...]
    widths: tuple[int, ...]
    multiple: int
    scale_dtype: str = "<f2"
    scale_bytes: int = 2

    def takes(self, g: Grouping, role: str | None, width: int | None, shape: tuple[int, ...] | None) -> bool:
        """Whether blocks `g` of a tensor of `role` (None: some role), `width` and `shape` (None: unknown) run."""
        assert g.block is not None
        return ((role is None or role in self.roles) and (width is None or width in self.widths) and g.block % self.multiple == 0
                and (shape is None or (g.axis == len(shape) - 1 and shape[-1] % g.block == 0)))


# XNNPACK (LiteRT 2.3) runs int4 fully-connected weights in blocks: a float16 scale per block of a
# multiple of 32 along the input axis (converter.export.tflite_int writes and probes them)
XNNPACK_BLOCKS = RoleBlocks(("matrix",), (4,), 32)


@dataclass(frozen=True)
class Native:
    """The stored settings a target executes as they are, and how it stores them."""

    schemes: tuple[str, ...] | None = None  # None: every scheme with an integer form (SchemeSpec.integers)
    widths: tuple[int, ...] = tuple(range(1, 17))  # code widths stored at their own width
    # roles (formats.model.Role values) that run other widths than `widths`: a runtime with int4 kernels
    # for some ops only (XNNPACK: fully-connected weights)
    role_widths: tuple[tuple[str, tuple[int, ...]], ...] = ()
    signed: bool | None = None  # integer forms: True symmetric only (no zero point), None either
    sparse_signed: bool = False  # sparse weights symmetric only: the integers spread out with 0 between them
    sparse_widths: tuple[int, ...] = ()  # the widths a sparse weight's values run at (empty: as any tensor of its role)
    groupings: tuple[str, ...] = GROUPINGS
    blocks: tuple[int, ...] = ()  # block sizes taken (empty: any the container allows)
    role_blocks: RoleBlocks | None = None  # blocks taken for some roles only, where `groupings` has none
    param_dtypes: tuple[str, ...] = ("<f4", "<f2")
    codecs: tuple[str, ...] | None = None  # codecs whose streams it keeps as stored; None: it decodes every codec
    # how it stores parameters: None, as the container does; else bytes per scale, and bits per zero
    # point (None: the integers' own width, packed like them)
    scale_bytes: int | None = None
    zero_point_bits: int | None = None
    zero_points: bool = False  # a zero point per group even for symmetric forms (onnx-int8's QLinear weights)
    # bytes an exported tensor adds beyond its data (nodes, names, records): fixed, and per character of its
    # name and key; and bytes every export adds (a decoder's tables); measured on the fixtures, an estimate
    overhead: tuple[int, float] = (0, 0.0)
    base: int = 0
    # symmetric forms' zero points are zero vectors, one of each length, shared by every tensor of that
    # length (a TFLite flatbuffer's per-channel int64 zeros): priced once per model (shared_zero_bytes)
    shared_zero_points: bool = False
    # roles whose symmetric per-tensor scale is written once per output channel (axis 0): LiteRT's hybrid
    # kernels take per-channel scales only
    channel_scale_roles: tuple[str, ...] = ()
    # roles whose unsigned codes the export centers (zero point folded in, one bit wider): the hybrid
    # kernels of a layout that puts every fully-connected weight there
    centered_roles: tuple[str, ...] = ()
    # bytes per value of a float tensor left float, by its role ("" for any other): TFLite widens float16 to
    # float32, its full-integer kernels take int32 (16x8: int64) biases; none given: as the source stores it
    kept_bytes: tuple[tuple[str, int], ...] = ()

    def takes_scheme(self, name: str, sparse: bool = False) -> bool:
        """Whether it runs scheme `name` natively (for a sparse weight's values when `sparse`)."""
        spec = SCHEMES.get(name)
        if spec is None:
            return False
        if sparse and self.sparse_signed and not spec.signed:
            return False
        if self.schemes is not None:
            return name in self.schemes
        return spec.integers is not None and (not self.signed or spec.signed)

    def width(self, spec: SchemeSpec, bits: int) -> int:
        """The width a target of integer forms stores `bits`-bit codes of `spec` at (its integers'),
        one that decodes named schemes stores the codes'."""
        return spec.integer_bits(bits) if self.schemes is None else bits

    def widths_for(self, role: str | None, sparse: bool = False) -> tuple[int, ...]:
        """The widths a tensor of `role` runs at (None: what every role runs), its values a sparse tensor's when `sparse`."""
        if sparse and self.sparse_widths:
            return self.sparse_widths
        return dict(self.role_widths).get(role, self.widths) if role is not None else self.widths

    def stored_width(self, spec: SchemeSpec, bits: int, role: str | None = None, sparse: bool = False) -> int:
        """The narrowest width the target stores that holds the codes (wider than theirs when widened)."""
        need = self.width(spec, bits) + self._centers(spec, bits, role)
        return min((w for w in self.widths_for(role, sparse) if w >= need), default=need)

    def _centers(self, spec: SchemeSpec, bits: int, role: str | None) -> bool:
        """Whether the export folds the zero point of `bits`-bit `spec` codes into signed integers for
        `role` (where one bit more still fits a width the role runs)."""
        return (not spec.signed and role in self.centered_roles
                and self.width(spec, bits) < max(self.widths_for(role), default=0))

    def _symmetric(self, spec: SchemeSpec, bits: int, role: str | None) -> bool:
        """Whether the export writes the codes with no zero point of their own (signed, or centered)."""
        return spec.signed or self._centers(spec, bits, role)

    def _role_blocks(self, g: Grouping) -> RoleBlocks | None:
        """What rules blocks `g` where the target takes blocks for some roles only, else None."""
        return self.role_blocks if g.block is not None and "block" not in self.groupings else None

    def takes_grouping(self, g: Grouping, role: str | None = None, width: int | None = None,
                       shape: tuple[int, ...] | None = None, sparse: bool = False) -> bool:
        """Whether it runs grouping `g` (for a tensor of `role`, `width` and `shape` where given; a sparse
        tensor's values, which role blocks never hold, when `sparse`)."""
        rb = self._role_blocks(g)
        if rb is not None:
            return not sparse and rb.takes(g, role, width, shape)
        return g.kind in self.groupings and (g.block is None or not self.blocks or g.block in self.blocks)

    def block_scales(self, g: Grouping) -> str | None:
        """The one dtype scales of grouping `g` are stored in where the target fixes it (role blocks), else None."""
        rb = self._role_blocks(g)
        return rb.scale_dtype if rb is not None else None

    @property
    def half_scales(self) -> bool:
        """Whether float16 scales are stored as such (and so worth choosing)."""
        return self.scale_bytes == 2 or (self.scale_bytes is None and "<f2" in self.param_dtypes)

    def keeps(self, codec: str) -> bool:
        """Whether codes stored by `codec` are kept as stored (else decoded and stored at their width)."""
        return self.codecs is not None and codec in self.codecs

    def takes(self, scheme: str, bits: int, g: Grouping, codec: str, role: str | None = None, sparse: bool = False,
              shape: tuple[int, ...] | None = None) -> bool:
        """Whether a setting runs natively (for a tensor of `role` and `shape`, a sparse one's values when
        `sparse`; role None: of any, shape None: of any): what a goal's menu may offer."""
        spec = SCHEMES.get(scheme)
        if spec is None:
            return False
        width = self.width(spec, bits)
        return (self.takes_scheme(scheme, sparse) and width in self.widths_for(role, sparse)
                and self.takes_grouping(g, role, width, shape, sparse) and (self.codecs is None or codec in self.codecs))

    def runs(self, e: TensorEntry, codec: str, sparse: bool = False) -> bool:
        """Whether tensor `e`, its codes stored by `codec` (a sparse tensor's values when `sparse`), runs natively."""
        floats = {d for d in e.dtypes.values() if d.startswith("<f")}
        fixed = self.block_scales(e.grouping)
        return (self.takes(e.scheme, e.bits, e.grouping, codec, e.role, sparse, e.shape)
                and floats <= ({fixed} if fixed else set(self.param_dtypes)))

    def price(self, scheme: str, bits: int, shape: tuple[int, ...], g: Grouping, code_bytes: int, param_bytes: int,
              codec: str, role: str | None = None, sparse: bool = False) -> int:
        """Bytes one tensor (of `role`; a sparse one's values when `sparse`) takes in the export, codes and
        parameters; `code_bytes` and `param_bytes` are what the container stores (or a menu's estimate of it)."""
        spec = SCHEMES[scheme]
        count = 1
        for n in shape:
            count *= n
        width = self.stored_width(spec, bits, role, sparse)
        codes = code_bytes if self.keeps(codec) else packed_size(count, width)
        if self.scale_bytes is None:
            return codes + param_bytes
        rb = self._role_blocks(g)
        groups = self.scale_count(spec, bits, g, shape, role, sparse)
        params = groups * (rb.scale_bytes if rb is not None else self.scale_bytes)
        if self.zero_points or not self._symmetric(spec, bits, role):
            params += packed_size(groups, self.zero_point_bits or width)
        return codes + params

    def scale_count(self, spec: SchemeSpec, bits: int, g: Grouping, shape: tuple[int, ...], role: str | None,
                    sparse: bool = False) -> int:
        """How many scales the export writes for a tensor: one per group, or one per output channel for a
        symmetric (or centered) per-tensor scale in a role of `channel_scale_roles` (not a sparse tensor's
        values, whose shape is not the weight's)."""
        if g.kind == "tensor" and self._symmetric(spec, bits, role) and role in self.channel_scale_roles and shape and not sparse:
            return shape[0]
        return g.count(shape)

    def shared_zero_bytes(self, tensors: Iterable[tuple[str, int, tuple[int, ...], Grouping, str | None, bool]]) -> int:
        """The zero vectors symmetric forms share (`shared_zero_points`): one per distinct scale count among
        `tensors` (scheme, bits, shape, grouping, role, sparse), at `zero_point_bits` a value."""
        if not self.shared_zero_points or self.scale_bytes is None:
            return 0
        lengths = {self.scale_count(SCHEMES[s], bits, g, shape, role, sparse) for s, bits, shape, g, role, sparse in tensors
                   if s in SCHEMES and self._symmetric(SCHEMES[s], bits, role) and self._role_blocks(g) is None}
        return sum(packed_size(n, self.zero_point_bits or 8) for n in lengths)

    def kept_growth(self, kept: Iterable[tuple[str, str, int]]) -> int:
        """What the tensors left float (role, dtype, values) take in the export beyond their bytes in the source."""
        by_role = dict(self.kept_bytes)
        if not by_role:
            return 0
        return sum(n * (by_role.get(role, by_role.get("", FLOAT_BYTES[dtype])) - FLOAT_BYTES[dtype])
                   for role, dtype, n in kept if dtype in FLOAT_BYTES)

    def extra(self, name: str, key: str) -> int:
        """Bytes a stored tensor adds to the export beyond its codes and parameters."""
        fixed, per_char = self.overhead
        return fixed + round(per_char * (len(name.encode()) + len(key.encode())))
