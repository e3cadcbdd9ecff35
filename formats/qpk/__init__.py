"""The .qpk container, everything FORMAT.md specifies: constants, scheme table, grouping, metadata
schema, bit stream, codecs, writer and reader."""

from qpack.formats.qpk.bitstream import pack, packed_size, unpack
from qpack.formats.qpk.codecs import ANS, CODECS, RAW, ZSTD, ByteCodec, Codec, CodeContext, codec_named, label_of, register_codec
from qpack.formats.qpk.grouping import Grouping
from qpack.formats.qpk.meta import TensorEntry, zeroed_bytes
from qpack.formats.qpk.reader import QpkReader
from qpack.formats.qpk.schemes import SCHEMES, ParamSpec, SchemeSpec, register_scheme, scheme_spec
from qpack.formats.qpk.spec import BlobKind
from qpack.formats.qpk.writer import Blob, QpkWriter, encode

__all__ = [
    "ANS", "CODECS", "RAW", "SCHEMES", "ZSTD", "Blob", "BlobKind", "Codec", "CodeContext", "Grouping", "ParamSpec", "QpkReader",
    "QpkWriter", "SchemeSpec", "TensorEntry", "ByteCodec", "codec_named", "label_of", "encode", "pack", "packed_size", "register_codec",
    "register_scheme", "scheme_spec", "unpack", "zeroed_bytes",
]
