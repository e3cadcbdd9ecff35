"""`--to c`: firmware sources: the packed codes and parameters as const C arrays with a tensor table,
and `qpk.h`, the single-file C99 decoder that reads them (and whole containers) bit-exactly.

The arrays hold the container's bytes as they are, little-endian (float16 scales and codebooks
too, with their dtype in the record), so the same `qpk_tensor` record describes a compiled-in
table and a tensor inside a `.qpk` in flash. Entropy-coded codes are written packed (decoded
straight from flash, no RAM), or, with `--to c-coded`, ans streams kept as they are (the flash of
the container; qpk_unpack decodes a tensor's codes into RAM first). zstd-coded codes are always
written packed.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from importlib import resources
from pathlib import Path
from typing import BinaryIO

import numpy as np

from qpack.converter.export import TARGETS
from qpack.converter.export.qpk_h import DECODER, define, defines
from qpack.formats.atomic import atomic_outputs
from qpack.formats.errors import OptionError, UnsupportedError
from qpack.formats.qpk import CODECS, RAW, BlobKind, QpkReader, TensorEntry, packed_size
from qpack.formats.qpk.spec import BYTE_BITS

DTYPES = {"float32": "QPK_FLOAT32", "float16": "QPK_FLOAT16", "bfloat16": "QPK_BFLOAT16", "float64": "QPK_FLOAT64"}
PARAM_FIELDS = ("scale", "zero_point", "emax", "centroids")  # qpk_tensor fields, named as the parameters
# float parameters stored in either of two dtypes: the qpk_tensor field that says which, and its values
PARAM_DTYPE_FIELDS = {"scale": "scale_dtype", "centroids": "centroids_dtype"}
PARAM_DTYPES = {"<f4": "QPK_FLOAT32", "<f2": "QPK_FLOAT16"}

_ROW = 16  # array items per line
_ROWS_PER_WRITE = 4096
# C99 only promises string literals of 4095 characters (gcc -pedantic warns past that): longer
# names are written as character lists
_MAX_LITERAL = 4000
_U32_MAX = 2**32 - 1
# C99 (5.2.4.1) promises 63 significant initial characters in a macro name or an identifier without
# linkage: every name written here fits in 63, so names that differ stay different. The only external
# names are qpk_tensors and qpk_tensor_count, well within the 31 it promises for those.
_MAX_NAME = 63
_MAX_MODEL = 32  # a model prefix leaves a tensor at least 63 - 32 - 3 characters of its own
# Prefixes <stdint.h> (macros INT... and UINT... ending in _MAX, _MIN, _C or _WIDTH, C99 7.26.8) and
# qpk.h (QPK_) keep for their macros: a model named so gets an `m_` in front.
_TAKEN_PREFIX = re.compile(r"QPK|U?INT", re.IGNORECASE)
# The header's own names, after the model prefix `<MODEL>_`; tensors take `<MODEL>_T_<NAME>`, which
# none of these begins with, so no tensor name can meet them.
GUARD, TENSOR_COUNT, MAX_COUNT, UNPACK_BYTES = "WEIGHTS_H", "TENSOR_COUNT", "MAX_COUNT", "UNPACK_BYTES"
TENSOR_SPACE = "T"
_HEX = np.frombuffer(b"".join(b"0x%02x," % i for i in range(256)), dtype=np.uint8).reshape(256, 5)


def scheme_constant(scheme: str) -> str | None:
    """qpk.h's constant for a scheme the C target runs (QPK_<NAME>, one of qpk.h's scheme numbers below
    QPK__SCHEMES), or None where qpk.h decodes no such scheme."""
    name, table = f"QPK_{scheme.upper()}", defines()
    if scheme not in (TARGETS["c"].native.schemes or ()) or not 0 <= table.get(name, -1) < table["QPK__SCHEMES"]:
        return None
    return name


def export_c_coded(reader: QpkReader, out: Path, notes: list[str]) -> list[Path]:
    """As export_c, with ans-coded codes kept as their streams (`--to c-coded`)."""
    return export_c(reader, out, notes, coded=True)


def unpack_bytes(e: TensorEntry) -> int:
    """qpk_unpack_size of an ans-coded tensor: its stream's tables (and contexts), then its packed codes.

    qpk.h's workspace layout (qpk__ans_tables), sized by qpk.h's own constants: up to a byte, 2^bits + 1
    uint32 cumulative frequencies per context and a byte per magnitude sum; past a byte, one table
    and a uint16 symbol per search bucket and one past the last.
    """
    if e.bits <= BYTE_BITS:
        tables = ((1 << e.bits) + 1) * 4 * define("QPK__ANS_CONTEXTS") + define("QPK__ANS_SUMS")
    else:
        tables = ((1 << e.bits) + 1) * 4 + ((1 << define("QPK__ANS_BUCKET_BITS")) + 1) * 2
    return tables + packed_size(e.count, e.bits)


def export_c(reader: QpkReader, out: Path, notes: list[str], coded: bool = False) -> list[Path]:
    """Write `qpk.h`, `<model>_weights.h` and `<model>_weights.c` into folder `out`; returns their paths.
    `coded`: ans-coded codes stay ans streams (qpk_unpack decodes them), else they are written packed.

    Raises:
        OptionError: `out` exists and is not a folder.
        UnsupportedError: a tensor uses a scheme or a parameter dtype qpk.h does not decode, or a
            dimension above 2^32 - 1.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out}: exists and is not a folder (--to c writes a folder of C sources)")
    for e in reader.entries:
        if scheme_constant(e.scheme) is None:
            raise UnsupportedError(f"tensor '{e.name[:200]}': scheme {e.scheme!r} has no C decoder")
        for name, dtype in e.dtypes.items():
            if name in PARAM_DTYPE_FIELDS and dtype not in PARAM_DTYPES:
                raise UnsupportedError(f"tensor '{e.name[:200]}': parameter {name!r} stored as {dtype!r} has no C decoder")
        if any(n > _U32_MAX for n in e.shape):
            raise UnsupportedError(f"tensor '{e.name[:200]}': dimension above 2^32 - 1 in shape {list(e.shape)}")
    source = reader.info["source"].get("name") or reader.path.name
    model = model_identifier(source)
    # the streams qpk_unpack decodes on the device: codes whose codec the target keeps as stored
    keeps = set(TARGETS["c-coded" if coded else "c"].native.codecs or ()) - {RAW.name}
    streams = {i for i, e in enumerate(reader.entries) if CODECS[reader.blobs[e.codes].codec].name in keeps}
    unpacked = sum(reader.blobs[e.codes].codec != RAW.id for e in reader.entries) - len(streams)
    if unpacked:
        notes.append(f"{unpacked} tensor(s) had entropy-coded codes in the container; the C arrays hold them packed"
                     + ("" if coded else " (--to c-coded keeps ans streams)"))
    for i in sorted(streams):  # decoded once before anything is written: a corrupt stream fails the export, not the device
        reader.blob_bytes(reader.entries[i].codes, BlobKind.CODES, reader.entries[i].code_context)
    if coded and not streams:
        notes.append(f"no tensor's codes are ans-coded in {reader.path.name}, so the files equal those of --to c "
                     "(convert with --codec ans for coded streams)")
    if streams:
        notes.append(f"{len(streams)} tensor(s) keep their ans streams: qpk_unpack decodes one into a workspace of "
                     f"{constant(model, UNPACK_BYTES)} bytes first")
    paths = [out / DECODER, out / f"{model}_weights.h", out / f"{model}_weights.c"]
    # all three or none: a new header beside an old source compiles into a wrong firmware
    with atomic_outputs(out) as files:
        with files.output(paths[0]) as f:
            f.write(resources.files("qpack.converter.export").joinpath(DECODER).read_bytes())
        with files.output(paths[1]) as f:
            f.write(weights_header(reader.entries, model, _comment(Path(source).name),
                                   max((unpack_bytes(reader.entries[i]) for i in streams), default=0)).encode())
        with files.output(paths[2]) as f:
            write_weights_source(f, reader, model, _comment(Path(source).name), streams)
    return paths


def _words(text: str) -> str:
    """`text` as letters and digits joined by single underscores, none at either end: no run of
    underscores (reserved in C++), no leading underscore (reserved in C)."""
    return re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_")


def model_identifier(source_name: str) -> str:
    """A C identifier (and file-name prefix) from the source model's file name: `digits_cnn.onnx` -> `digits_cnn`;
    `m_` in front of one that starts with a digit or with a prefix <stdint.h> or qpk.h keeps (`int8` -> `m_int8`)."""
    stem = Path(source_name.replace("\\", "/")).name
    stem = stem.rsplit(".", 1)[0] if "." in stem.lstrip(".") else stem
    ident = _words(stem) or "model"
    if ident[0].isdigit() or _TAKEN_PREFIX.match(ident):
        ident = "m_" + ident
    return ident[:_MAX_MODEL].rstrip("_")


def constant(model: str, name: str) -> str:
    """The header's constant `name` (GUARD, TENSOR_COUNT, MAX_COUNT, UNPACK_BYTES) for `model`: `<MODEL>_<NAME>`."""
    return f"{model.upper()}_{name}"


def tensor_constants(entries: Iterable[TensorEntry], model: str) -> list[str]:
    """Enum constants naming each tensor's index, `<MODEL>_T_<NAME>`, at most 63 characters.

    NAME is the tensor's name in capitals, each run of other characters one underscore (a name left
    empty: its index). Where names meet, the first tensor keeps the plain form and each later one
    gets its index, `_<index>` (then `_<index>_2`, ... should that be some tensor's name too).
    """
    prefix = f"{model.upper()}_{TENSOR_SPACE}_"
    room = _MAX_NAME - len(prefix)
    bases = [_words(e.name).upper()[:room].rstrip("_") or str(i) for i, e in enumerate(entries)]
    first: dict[str, int] = {}
    for i, base in enumerate(bases):
        first.setdefault(base, i)
    taken = set(first)
    names = []
    for i, base in enumerate(bases):
        name, k = base, 1
        if first[base] != i:
            name = base[: room - len(f"_{i}")].rstrip("_") + f"_{i}"
            while name in taken:
                k += 1
                name = base[: room - len(f"_{i}_{k}")].rstrip("_") + f"_{i}_{k}"
        taken.add(name)
        names.append(prefix + name)
    return names


def weights_header(entries: list[TensorEntry], model: str, source: str, unpack: int = 0) -> str:
    """`unpack`: the largest qpk_unpack workspace a tensor of the table needs (0: every tensor packed)."""
    constants = tensor_constants(entries, model)
    guard, count, largest, work = (constant(model, n) for n in (GUARD, TENSOR_COUNT, MAX_COUNT, UNPACK_BYTES))
    lines = [
        f"/* {model}_weights.h: the quantized weights of {source} as C arrays, decoded through qpk.h.",
        " * Written by `qpack export --to c` from a .qpk container: do not edit.",
        " *",
        f" *     static float w[{largest}];",
        f" *     const qpk_tensor *t = &qpk_tensors[{constants[0] if entries else f'{model.upper()}_{TENSOR_SPACE}_...'}];",
        " *     int rc = qpk_decode_tensor(t, w);                      0 on success",
        " *     rc = qpk_decode_range(t, first, n, w);                 or weights [first, first + n)",
        *([" *",
           " * Tensors with codec QPK_ANS hold ans streams: qpk_unpack(t, work, sizeof work, &raw) into",
           f" * static uint32_t work[{work} / 4 + 1], then decode from &raw."] if unpack else []),
        " */",
        f"#ifndef {guard}",
        f"#define {guard}",
        "",
        '#include "qpk.h"',
        "",
        "#ifdef __cplusplus",
        'extern "C" {',
        "#endif",
        "",
        "extern const qpk_tensor qpk_tensors[];",
        "extern const size_t qpk_tensor_count;",
        "",
        "/* Index of each tensor in qpk_tensors. */",
        f"enum {model}_tensor {{",
    ]
    for i, (name, e) in enumerate(zip(constants, entries)):
        lines.append(f"    {name} = {i},  /* {_describe(e)} */")
    lines += [
        f"    {count} = {len(entries)}",
        "};",
        "",
        "/* The largest tensor in weights: a float buffer of this size decodes any tensor whole. */",
        f"#define {largest} {max((e.count for e in entries), default=0)}u",
        "/* The largest qpk_unpack workspace a tensor needs (codec QPK_ANS), in bytes; 0 when every tensor is packed. */",
        f"#define {work} {unpack}u",
        "",
        "#ifdef __cplusplus",
        "}",
        "#endif",
        f"#endif /* {guard} */",
        "",
    ]
    return "\n".join(lines)


def write_weights_source(f: BinaryIO, reader: QpkReader, model: str, source: str, streams: Collection[int] = ()) -> None:
    """The arrays and the table, tensor by tensor, so memory holds one tensor's blobs at a time;
    the tensors numbered in `streams` keep their ans streams."""
    f.write(
        f"/* {model}_weights.c: the quantized weights of {source} (qpack export --to c): do not edit.\n"
        " * Codes are LSB-first n-bit streams and parameters little-endian bytes, as in the .qpk container.\n"
        " * This file compiles the qpk.h decoder too unless QPK_NO_IMPLEMENTATION is defined; define\n"
        " * QPK_WEIGHTS_ATTR to place the arrays (a section attribute, say). */\n"
        "#ifndef QPK_NO_IMPLEMENTATION\n#define QPK_IMPLEMENTATION\n#endif\n"
        f'#include "{model}_weights.h"\n\n'
        "#ifndef QPK_WEIGHTS_ATTR\n#define QPK_WEIGHTS_ATTR\n#endif\n\n".encode()
    )
    rows = []
    for i, e in enumerate(reader.entries):
        f.write(f"/* {i}: {_describe(e)} */\n".encode())
        fields = {"name": f"t{i}_name", "name_len": f"{len(e.name.encode())}u", "key": f"t{i}_key",
                  "key_len": f"{len(e.key.encode())}u", "ndim": f"{len(e.shape)}u"}
        _write_string(f, f"t{i}_name", e.name)
        _write_string(f, f"t{i}_key", e.key)
        if e.shape:
            f.write(f"static const uint32_t t{i}_shape[] = {{{', '.join(f'{n}u' for n in e.shape)}}};\n".encode())
            fields["shape"] = f"t{i}_shape"
        if i in streams:  # the stream as stored (export_c decoded it once: it is sound)
            codes = bytes(reader.blob_view(e.codes, BlobKind.CODES))
        else:
            codes = bytes(reader.blob_bytes(e.codes, BlobKind.CODES, e.code_context))  # decoded when entropy-coded
        fields.update(count=f"UINT64_C({e.count})", scheme=str(scheme_constant(e.scheme)), bits=f"{e.bits}u", dtype=DTYPES[e.dtype],
                      codec="QPK_ANS" if i in streams else "QPK_RAW", axis=str(-1 if e.grouping.axis is None else e.grouping.axis),
                      block=f"UINT64_C({e.grouping.block or 0})", groups=f"UINT64_C({e.groups})")
        if codes:
            _write_array(f, f"t{i}_codes", codes)
            fields["codes"] = f"t{i}_codes"
        fields["codes_len"] = f"{len(codes)}u"
        for name in PARAM_FIELDS:
            if name in e.params:
                data = bytes(reader.blob_bytes(e.params[name], BlobKind.PARAM))  # in its stored dtype
                if data:
                    _write_array(f, f"t{i}_{name}", data)
                    fields[name] = f"t{i}_{name}"
                if name in PARAM_DTYPE_FIELDS:
                    fields[PARAM_DTYPE_FIELDS[name]] = PARAM_DTYPES[e.dtypes[name]]
        f.write(b"\n")
        rows.append(_row(fields))
    f.write(b"const qpk_tensor qpk_tensors[] = {\n")
    # C has no empty arrays: a table without tensors holds one zeroed row that the count excludes
    f.write("".join(rows or ["    {.name = NULL},\n"]).encode())
    f.write(f"}};\nconst size_t qpk_tensor_count = {len(rows)}u;\n".encode())


# the fields of a qpk_tensor initializer, a line per group
_ROW_LINES = (("name", "name_len", "key", "key_len"), ("ndim", "shape", "count"),
              ("scheme", "bits", "dtype", "codec", "axis", "block", "groups"), ("codes", "codes_len") + PARAM_FIELDS,
              tuple(PARAM_DTYPE_FIELDS.values()))


def _row(fields: dict[str, str]) -> str:
    lines = [", ".join(f".{k} = {fields[k]}" for k in group if k in fields) for group in _ROW_LINES]
    lines = [line for line in lines if line]
    return "    {" + ",\n     ".join(lines) + "},\n"


def _describe(e: TensorEntry) -> str:
    g = e.grouping
    if g.axis is None:
        grouping = "per tensor"
    else:
        grouping = f"per channel along {g.axis}" if g.block is None else f"blocks of {g.block} along {g.axis}"
    return _comment(f"{e.name} {list(e.shape)} {e.scheme} {e.bits} bits, {grouping}")


def _comment(text: str, limit: int = 100) -> str:
    """Text safe inside a C block comment: printable ASCII, no `*/`, no trigraph or line splice."""
    safe = re.sub(r"[^0-9A-Za-z _.,:;=+\-\[\]()<>#@%&|^~!'\"]", "_", text)
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


def _write_string(f: BinaryIO, symbol: str, text: str) -> None:
    """A NUL-terminated const char array; every byte outside plain ASCII as a three-digit octal escape,
    which ends unambiguously (and `?` too, so no trigraph forms)."""
    raw = text.encode()
    escaped = [chr(b) if 0x20 <= b < 0x7F and b not in b'"\\?' else f"\\{b:03o}" for b in raw]
    if len(raw) <= _MAX_LITERAL:
        f.write(f'static const char {symbol}[] = "{"".join(escaped)}";\n'.encode())
        return
    f.write(f"static const char {symbol}[] = {{\n".encode())
    items = [f"'{c}'" if c != "'" else "'\\''" for c in escaped] + ["0"]
    for start in range(0, len(items), _ROW):
        f.write(("    " + ",".join(items[start : start + _ROW]) + ",\n").encode())
    f.write(b"};\n")


def _write_array(f: BinaryIO, symbol: str, data: bytes) -> None:
    """`static const uint8_t symbol[n] = {0x..,...};`, formatted by numpy: tens of MB take seconds."""
    f.write(f"static const uint8_t {symbol}[{len(data)}] QPK_WEIGHTS_ATTR = {{\n".encode())
    arr = np.frombuffer(data, dtype=np.uint8)
    step = _ROW * _ROWS_PER_WRITE
    for start in range(0, arr.size, step):
        chunk = arr[start : start + step]
        full = chunk.size // _ROW
        if full:
            body = _HEX[chunk[: full * _ROW]].reshape(full, _ROW * 5)
            indent = np.full((full, 4), ord(" "), dtype=np.uint8)
            newline = np.full((full, 1), ord("\n"), dtype=np.uint8)
            f.write(np.hstack([indent, body, newline]).tobytes())
        if chunk.size % _ROW:
            f.write(b"    " + _HEX[chunk[full * _ROW :]].tobytes() + b"\n")
    f.write(b"};\n")
