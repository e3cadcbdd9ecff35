"""The .qpk container, everything FORMAT.md specifies: constants, scheme table, grouping, metadata
schema, bit stream, codecs, writer and reader."""

from formats.qpk.bitstream import pack, packed_size, unpack
from formats.qpk.codecs import ANS, CODECS, RAW, ZSTD, Codec, CodeContext, codec_named, register_codec
from formats.qpk.grouping import Grouping
from formats.qpk.meta import TensorEntry
from formats.qpk.reader import QpkReader
from formats.qpk.schemes import SCHEMES, ParamSpec, SchemeSpec, register_scheme, scheme_spec
from formats.qpk.spec import BlobKind
from formats.qpk.writer import Blob, QpkWriter, encode

__all__ = [
    "ANS", "CODECS", "RAW", "SCHEMES", "ZSTD", "Blob", "BlobKind", "Codec", "CodeContext", "Grouping", "ParamSpec", "QpkReader",
    "QpkWriter", "SchemeSpec", "TensorEntry", "codec_named", "encode", "pack", "packed_size", "register_codec",
    "register_scheme", "scheme_spec", "unpack",
]
