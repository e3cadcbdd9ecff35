/* qpk.h: a single-file C99 decoder for .qpk quantized weights (FORMAT.md, version 1.x).
 *
 * Decodes n-bit codes (schemes asym, sym, pow2, lut and dq; per-tensor, per-channel and blocked
 * parameter groups; scales and codebooks stored as float32 or float16) into float32 values
 * bit-exactly equal to qpack's Python reader, and reads a whole .qpk container held in memory
 * (flash, say), checking every rule of FORMAT.md's "Reading safely". Codes stored entropy-coded
 * (codec 2, ans: what qpack's goals write) are unpacked by qpk_unpack into a caller's buffer.
 * Parameters outside FORMAT.md's ranges are refused (QPK_E_PARAM): no weight decodes to NaN or inf.
 *
 * No allocation, no I/O (qpk_open and qpk_unpack work in buffers the caller gives); only
 * <stdint.h>, <stddef.h> and <string.h>. stb style:
 *
 *     #include "qpk.h"                 declarations, in any number of files
 *
 *     #define QPK_IMPLEMENTATION
 *     #include "qpk.h"                 the code, in exactly one .c file
 *
 * The `<model>_weights.c` that `qpack export --to c` writes is that one file unless it is
 * compiled with -DQPK_NO_IMPLEMENTATION. Define QPK_NO_READER to leave out the container reader
 * (qpk_open and what it needs: SHA-256, CRC-32, msgpack), keeping only the decoder for tables
 * compiled into the firmware.
 *
 * Functions returning int return 0 (QPK_OK) or a negative QPK_E_* code. The reader functions read
 * only inside the buffer they are given, whatever it holds; decoding trusts a descriptor's
 * pointers to hold the lengths it states and checks everything else. Bit-exactness assumes
 * IEEE-754 binary32 `float` with round-to-nearest and subnormals kept (no flush-to-zero, no
 * -ffast-math): the decoder performs the same single float32 multiplication per weight as the
 * Python reader (lut: none, a table lookup). float16 parameters are widened to float32 exactly,
 * from their bits (no _Float16 needed), subnormals included.
 */
#ifndef QPK_H
#define QPK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QPK_FORMAT_MAJOR 1 /* the container major version this decoder reads (any minor) */
#define QPK_MAX_RANK 16    /* FORMAT.md: at most 16 dimensions */

/* Error codes: always negative; qpk_strerror() names them. */
#define QPK_OK 0
#define QPK_E_ARG (-1)       /* a NULL pointer or an inconsistent tensor descriptor */
#define QPK_E_RANGE (-2)     /* an element range or index outside the tensor or the file */
#define QPK_E_SIZE (-3)      /* buffer shorter than a header, or not the length the header says */
#define QPK_E_MAGIC (-4)     /* not a .qpk container */
#define QPK_E_CRC (-5)       /* header CRC-32 mismatch */
#define QPK_E_VERSION (-6)   /* another major version */
#define QPK_E_HEADER (-7)    /* flags, reserved bytes, metadata length or payload offset */
#define QPK_E_CHECKSUM (-8)  /* SHA-256 of the metadata or of a blob mismatch */
#define QPK_E_MSGPACK (-9)   /* metadata is not one well-formed msgpack value (or nests too deep) */
#define QPK_E_META (-10)     /* metadata breaks the schema: missing or mistyped top-level field */
#define QPK_E_BLOB (-11)     /* blob table: kind, codec, order, alignment, bounds, padding, decompression budget */
#define QPK_E_TENSOR (-12)   /* a tensor entry: scheme, bits, shape, axis, block, params, param dtypes, lengths, key */
#define QPK_E_LIMIT (-13)    /* beyond a limit of this decoder (a dimension above 2^32 - 1) */
#define QPK_E_CODEC (-14)    /* codes ans-coded: qpk_unpack first; zstd codes or coded parameters: export --to c */
#define QPK_E_NOTFOUND (-15) /* no tensor of that name */
#define QPK_E_STREAM (-16)   /* an ans code stream breaks FORMAT.md's rules (header, tables, words, end state) */
#define QPK_E_SPACE (-17)    /* the workspace is smaller than qpk_unpack_size or qpk_open_size says */
#define QPK_E_PARAM (-18)    /* a parameter out of range: scale or centroid not finite, a value overflowing, emax outside -23..127 */

/* Codecs of a descriptor's codes (FORMAT.md's blob table): raw, or ans (decode with qpk_unpack).
 * Any other value (codes stored with zstd, or parameters stored with any codec) gives QPK_E_CODEC. */
#define QPK_RAW 0
#define QPK_ANS 2

/* Schemes, FORMAT.md's scheme table. */
#define QPK_ASYM 0 /* (code - zero_point) * scale; 1..8 bits */
#define QPK_SYM 1  /* (code - M) * scale, M = 2^(bits-1) - 1; 2..16 bits */
#define QPK_POW2 2 /* +-2^(emax - M + m), m = code & M, sign = code >> (bits-1); 2..8 bits */
#define QPK_LUT 3  /* centroids[group * 2^bits + code]: a codebook of 2^bits values per group; 1..8 bits */
#define QPK_DQ 4   /* level * scale, the level from k = code - M and a state run through the codes; 2..16 bits */

/* Source dtypes (informative: the decoder always writes float32); QPK_FLOAT32 and QPK_FLOAT16
 * also name how scale and centroids are stored (scale_dtype, centroids_dtype). */
#define QPK_FLOAT32 0
#define QPK_FLOAT16 1
#define QPK_BFLOAT16 2
#define QPK_FLOAT64 3

/* One quantized tensor: shape, code width, grouping, and pointers to its packed codes and
 * parameters, stored exactly as in the container (little-endian bytes, so the same struct
 * describes a table compiled into firmware and a tensor inside a .qpk in memory). */
typedef struct qpk_tensor {
    const char *name;          /* the source model's name; see name_len */
    size_t name_len;           /* bytes; exported tables also NUL-terminate, qpk_get_tensor does not */
    const char *key;           /* where the tensor sits in the source graph, unique; see key_len */
    size_t key_len;
    uint32_t ndim;             /* 0..QPK_MAX_RANK */
    const uint32_t *shape;     /* ndim dimensions, C order (may be NULL when ndim is 0) */
    uint64_t count;            /* product of shape: weights, codes, output floats */
    uint8_t scheme;            /* QPK_ASYM, QPK_SYM, QPK_POW2, QPK_LUT or QPK_DQ */
    uint8_t bits;              /* code width */
    uint8_t dtype;             /* QPK_FLOAT32... : the source dtype (informative) */
    uint8_t codec;             /* QPK_RAW; QPK_ANS: codes is an ans stream of codes_len bytes (qpk_unpack) */
    int32_t axis;              /* -1: one parameter group for the whole tensor */
    uint64_t block;            /* 0: one group per index along axis; B >= 1: B weights along axis */
    uint64_t groups;           /* number of parameter groups (C order of the group array) */
    const uint8_t *codes;      /* codes_len bytes of LSB-first n-bit codes */
    size_t codes_len;          /* ceil(count * bits / 8) */
    const uint8_t *scale;      /* asym, sym: groups x float32 or float16 (scale_dtype), little-endian */
    const uint8_t *zero_point; /* asym: groups x uint8 */
    const uint8_t *emax;       /* pow2: groups x int16, little-endian */
    const uint8_t *centroids;  /* lut: groups x 2^bits float16 or float32 (centroids_dtype), little-endian */
    uint8_t scale_dtype;       /* QPK_FLOAT32 (0, so also when left unset) or QPK_FLOAT16 */
    uint8_t centroids_dtype;   /* QPK_FLOAT16 (the container's default: set it) or QPK_FLOAT32 */
} qpk_tensor;

/* Check a descriptor (scheme, width, shape product, grouping, lengths); 0 when decodable. */
int qpk_tensor_check(const qpk_tensor *t);

/* Check every parameter of a descriptor against FORMAT.md's ranges ("Parameter ranges": scales
 * and centroids finite, no code's value overflowing float32, pow2's emax within -23..127), one
 * pass over the parameter arrays: 0, or QPK_E_PARAM. qpk_get_tensor runs it; the decoders check
 * each group's parameters as they reach it, so no NaN or infinity is ever decoded. */
int qpk_params_check(const qpk_tensor *t);

/* Decode all t->count weights into out (t->count floats). On an error, out holds no meaning. */
int qpk_decode_tensor(const qpk_tensor *t, float *out);

/* Decode weights [first, first + n) in C order into out (n floats): a row, a block, any slice,
 * so a device can stream a tensor through a small buffer. Same values as the whole decode. */
int qpk_decode_range(const qpk_tensor *t, uint64_t first, size_t n, float *out);

/* Workspace bytes qpk_unpack needs for t: the stream's frequency tables (16 x 257 x 4 bytes and
 * 2,048 of contexts for codes of up to 8 bits; 65537 x 4 and 2,050 of search buckets for 16-bit
 * codes) then its packed codes,
 * ceil(count * bits / 8). 0 for raw codes (nothing to unpack) and where the sum would not fit in
 * a size_t. */
size_t qpk_unpack_size(const qpk_tensor *t);

/* Decode an ans-coded tensor's codes (t->codec == QPK_ANS) into `work` and describe them raw in
 * *raw: a copy of *t whose codes point into work, codec QPK_RAW, ready for qpk_decode_tensor and
 * qpk_decode_range (raw may be t itself). `work`: work_len >= qpk_unpack_size(t) bytes, aligned
 * for uint32_t and used as such (malloc'd, or a uint32_t array), not overlapping the stream. The
 * stream is checked against every rule of FORMAT.md ("ans code streams"), reading only
 * t->codes_len bytes and decoding exactly t->count codes: QPK_E_STREAM when it breaks one. A raw
 * tensor is copied as it is (work unused). Decoding is sequential; a device with little RAM
 * decodes a tensor's codes once into flash or a dedicated buffer and streams floats from them
 * with qpk_decode_range. */
int qpk_unpack(const qpk_tensor *t, void *work, size_t work_len, qpk_tensor *raw);

/* The first tensor of `table` whose name is `name` (NUL-terminated), or NULL. */
const qpk_tensor *qpk_find_tensor(const qpk_tensor *table, size_t n, const char *name);

/* A constant English description of an error code. */
const char *qpk_strerror(int err);

#ifndef QPK_NO_READER

#define QPK_OPEN_TRUST_BLOBS 1u /* qpk_open_ex: skip the blobs' SHA-256 (header and metadata still checked) */

/* A .qpk container validated in memory; the buffer and the workspace given to qpk_open must
 * outlive it. Fields are read-only. */
typedef struct qpk_file {
    const uint8_t *data;
    size_t size;
    uint16_t major, minor;
    uint8_t format;         /* 0: onnx, 1: tflite (how the graph blob is read) */
    size_t meta_length;     /* metadata (msgpack) at data + 80 */
    size_t payload_offset;  /* blobs are relative to data + payload_offset */
    uint32_t tensor_count;
    uint32_t blob_count;
    uint32_t graph;         /* blob index of the graph */
    size_t tensors_at_;     /* private: metadata offsets of the tensor list and the blob table */
    size_t blobs_at_;
    const uint32_t *index_; /* private: the workspace: each blob row's metadata offset, then each tensor entry's */
} qpk_file;

/* Workspace bytes qpk_open needs for the container in buf: 4 per blob and 4 per tensor (a model of
 * 100 tensors: about 1.6 KB), from the header and the top of the metadata (no checksum is
 * computed). 0 when the container needs none, and for a buffer too broken to tell, which qpk_open
 * then refuses for what is wrong with it. */
size_t qpk_open_size(const uint8_t *buf, size_t len);

/* Validate a whole container: header (magic, CRC-32, version, flags, reserved, lengths), metadata
 * SHA-256 and msgpack, blob table (kinds, codecs, order, alignment, bounds, zero padding, SHA-256,
 * decompression budget, the graph's checksum when it is stored raw) and every tensor entry
 * (parameter dtypes included, unique keys, each blob named by one tensor), in time linear in the
 * file (n log n in the tensors, for their keys). `work`: work_len >= qpk_open_size(buf, len) bytes,
 * aligned for uint32_t (malloc'd, or a uint32_t array; NULL when the size is 0): an index of the
 * blob table and the tensor list, which qpk_get_tensor reads afterwards, so it must outlive *f as
 * buf does. QPK_E_SPACE when it is smaller. On success fills *f; on failure leaves it zeroed. */
int qpk_open(const uint8_t *buf, size_t len, void *work, size_t work_len, qpk_file *f);
int qpk_open_ex(const uint8_t *buf, size_t len, unsigned flags, void *work, size_t work_len, qpk_file *f);

/* Describe tensor `index` (0..tensor_count-1); pointers go into the file's buffer, shape into the
 * caller's array. A tensor with a dimension above 2^32 - 1 gives QPK_E_LIMIT; one whose parameters
 * lie outside their range (qpk_params_check), QPK_E_PARAM. One whose codes are ans-coded is
 * described with codec QPK_ANS (codes: the stream; qpk_unpack decodes it); one stored with zstd
 * (codes or parameters) is described with codec 1, and decoding it gives QPK_E_CODEC (its coded
 * parameters are not checked). */
int qpk_get_tensor(const qpk_file *f, uint32_t index, qpk_tensor *t, uint32_t shape[QPK_MAX_RANK]);

/* Index of the first tensor named name[0..len). */
int qpk_find(const qpk_file *f, const char *name, size_t len, uint32_t *index);

/* The checksums the container uses, for a firmware's own checks. */
uint32_t qpk_crc32(const void *data, size_t n);               /* zlib's CRC-32 */
void qpk_sha256(const void *data, size_t n, uint8_t out[32]); /* FIPS 180-4 */

#endif /* QPK_NO_READER */

#ifdef __cplusplus
}
#endif
#endif /* QPK_H */

/* ---------------------------------------------------------------------------------------------- */
#ifdef QPK_IMPLEMENTATION
#ifndef QPK_IMPLEMENTATION_DONE
#define QPK_IMPLEMENTATION_DONE

#include <string.h>

/* The decoder reinterprets little-endian bytes as float: it needs a 32-bit float. */
typedef char qpk__float_is_32_bits[sizeof(float) == 4 ? 1 : -1];

#define QPK__MAX_ELEMENTS (UINT64_C(1) << 48) /* FORMAT limits, as the Python reader applies them */
#define QPK__MAX_DIM (UINT64_C(1) << 40)         /* a dimension and a block are below it */
/* FORMAT.md "Parameter ranges": pow2's emax, so that every code's value 2^(emax - M + m), m in 1..M
 * and M up to 127, is a power of two float32 holds exactly (2^-149, its least subnormal, to 2^127) */
#define QPK__EMAX_MIN (-23)
#define QPK__EMAX_MAX 127

static uint32_t qpk__le16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

static uint32_t qpk__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static float qpk__f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f); /* the defined way to reinterpret bits in C99 */
    return f;
}

/* 2^e as float32, exactly what ldexpf(1, e) gives: normal, subnormal, 0 below 2^-149 (2^-150 is
 * a tie that rounds to even, i.e. to 0) and +inf above 2^127 (pow2's emax, checked to lie in
 * -23..127, asks for neither). Built from bits, no libm. */
static float qpk__pow2f(int32_t e)
{
    if (e > 127) return qpk__f32(0x7F800000u);
    if (e >= -126) return qpk__f32((uint32_t)(e + 127) << 23);
    if (e >= -149) return qpk__f32(UINT32_C(1) << (e + 149));
    return 0.0f;
}

/* float16 bits (IEEE-754 binary16) widened to float32 bits, exactly as numpy's astype: normals
 * rebiased, subnormals normalized, zeros and infinities kept, NaNs with their sign and payload (a
 * signaling NaN stays signaling). Integer operations only. */
static uint32_t qpk__f16to32(uint32_t h)
{
    uint32_t sign = (h & 0x8000u) << 16, e = h >> 10 & 0x1Fu, m = h & 0x3FFu;
    if (e == 0x1Fu) return sign | 0x7F800000u | m << 13;
    if (e) return sign | (e + 112u) << 23 | m << 13; /* bias 15 -> 127 */
    if (!m) return sign;
    e = 113u; /* m * 2^-24: shift the leading one up to the implicit bit, an exponent down per step */
    do {
        m <<= 1;
        e--;
    } while (!(m & 0x400u));
    return sign | e << 23 | (m & 0x3FFu) << 13;
}

/* The bits of float parameter i of an array stored as QPK_FLOAT32 or QPK_FLOAT16. */
static uint32_t qpk__param_bits(const uint8_t *p, uint64_t i, unsigned dtype)
{
    return dtype == QPK_FLOAT16 ? qpk__f16to32(qpk__le16(p + 2 * i)) : qpk__le32(p + 4 * i);
}

/* Whether float32 bits are a finite number (an exponent field other than all ones). */
static int qpk__finite(uint32_t u) { return (u & 0x7F800000u) != 0x7F800000u; }

/* Whether level * scale, one float32 multiplication as the decoder does it, is finite: the value
 * read back through memory, so no wider intermediate (an x87 register) hides an overflow. */
static int qpk__scaled_finite(uint32_t level, float scale)
{
    float p = (float)level * scale;
    uint32_t u;
    memcpy(&u, &p, sizeof u);
    return qpk__finite(u);
}

/* pow2's emax of group g (int16, sign by hand) */
static int32_t qpk__emax(const uint8_t *p, uint64_t g)
{
    uint32_t u = qpk__le16(p + 2 * g);
    return (int32_t)u - (u & 0x8000u ? 65536 : 0);
}

/* The largest |level| a code of group g can take, which its scale must keep finite (FORMAT.md
 * "Parameter ranges"): asym max(zero_point, 2^n - 1 - zero_point), sym 2^(n-1), dq 2^n. */
static uint32_t qpk__top_level(const qpk_tensor *t, uint64_t g)
{
    uint32_t top = (1u << t->bits) - 1u, z;
    if (t->scheme == QPK_DQ) return 1u << t->bits;
    if (t->scheme != QPK_ASYM) return 1u << (t->bits - 1);
    z = t->zero_point[g]; /* up to 255, above the top code at narrow widths: then it is the largest */
    return z >= top || z > top - z ? z : top - z;
}

/* Code i of a stream (bit offset i * bits), LSB first. */
static unsigned qpk__code_at(const uint8_t *codes, uint64_t bit, unsigned bits)
{
    const uint8_t *p = codes + (size_t)(bit >> 3);
    unsigned shift = (unsigned)(bit & 7u), code = (unsigned)p[0] >> shift;
    /* a code that crosses a byte boundary takes its high bits from the next byte, which exists
     * exactly when it does (the stream is ceil(count * bits / 8) bytes) */
    if (shift + bits > 8u) code |= (unsigned)p[1] << (8u - shift);
    if (shift + bits > 16u) code |= (unsigned)p[2] << (16u - shift); /* codes of 10..16 bits */
    return code & ((1u << bits) - 1u);
}

/* dq's state after a code k (FORMAT.md "Dequantization"): its quantizer moves to the one before,
 * the other bit takes that one XOR the parity of k. */
static unsigned qpk__dq_next(unsigned state, int k)
{
    return 2u * ((state & 1u) ^ ((unsigned)k & 1u)) + (state >> 1);
}

static int qpk__scheme_bits(unsigned scheme, unsigned bits)
{
    unsigned lo = scheme == QPK_ASYM || scheme == QPK_LUT ? 1u : 2u;
    return scheme <= QPK_DQ && bits >= lo && bits <= (scheme == QPK_SYM || scheme == QPK_DQ ? 16u : 8u);
}

/* parameter groups of a shape and grouping (FORMAT.md "Parameter groups"), as Grouping.count */
static uint64_t qpk__groups(const uint32_t *shape, uint32_t ndim, int32_t axis, uint64_t block)
{
    uint64_t g = 1;
    uint32_t d;
    if (axis < 0) return 1;
    if (block == 0) return shape[axis];
    for (d = 0; d < ndim; d++) {
        uint64_t n = shape[d];
        if ((int32_t)d == axis) n = n / block + (n % block != 0); /* ceil, without overflow for huge B */
        g *= n; /* each factor <= its dimension and the product of dimensions is < 2^48: no overflow */
    }
    return g;
}

/* The parameter arrays the descriptor's scheme reads are given, in dtypes this decoder reads. */
static int qpk__params_given(const qpk_tensor *t)
{
    if (t->scale_dtype > QPK_FLOAT16 || t->centroids_dtype > QPK_FLOAT16) return 0;
    if (!t->groups) return 1;
    if ((t->scheme == QPK_ASYM || t->scheme == QPK_SYM || t->scheme == QPK_DQ) && !t->scale) return 0;
    if (t->scheme == QPK_ASYM && !t->zero_point) return 0;
    if (t->scheme == QPK_POW2 && !t->emax) return 0;
    return t->scheme != QPK_LUT || t->centroids;
}

int qpk_tensor_check(const qpk_tensor *t)
{
    uint64_t count = 1, zero = 0;
    uint32_t d;
    if (!t) return QPK_E_ARG;
    if (!qpk__scheme_bits(t->scheme, t->bits) || t->ndim > QPK_MAX_RANK || (t->ndim && !t->shape)) return QPK_E_ARG;
    for (d = 0; d < t->ndim; d++) {
        if (t->shape[d] == 0) zero = 1;
        else if (count < QPK__MAX_ELEMENTS) count *= t->shape[d]; /* < 2^48 * 2^32: no overflow */
    }
    if (zero) count = 0;
    if (count >= QPK__MAX_ELEMENTS || count != t->count) return QPK_E_ARG;
    if (t->axis < -1 || (t->axis >= 0 && (uint32_t)t->axis >= t->ndim) || (t->block && t->axis < 0)) return QPK_E_ARG;
    if (t->block && t->scheme == QPK_DQ) return QPK_E_ARG; /* its codes run in order: no blocks */
    if (t->groups != qpk__groups(t->shape, t->ndim, t->axis, t->block)) return QPK_E_ARG;
    if (t->codec != 0) return QPK_E_CODEC;
    if ((uint64_t)t->codes_len != (count * t->bits + 7) / 8 || (t->codes_len && !t->codes)) return QPK_E_ARG;
    return qpk__params_given(t) ? QPK_OK : QPK_E_ARG;
}

int qpk_params_check(const qpk_tensor *t)
{
    uint64_t g, i, n;
    int rc = qpk_tensor_check(t);
    if (rc == QPK_E_CODEC) rc = qpk__params_given(t) ? QPK_OK : QPK_E_ARG; /* coded codes: parameters still checked */
    if (rc) return rc;
    if (t->scheme == QPK_POW2) {
        for (g = 0; g < t->groups; g++) {
            int32_t e = qpk__emax(t->emax, g);
            if (e < QPK__EMAX_MIN || e > QPK__EMAX_MAX) return QPK_E_PARAM;
        }
    } else if (t->scheme == QPK_LUT) {
        n = t->groups << t->bits; /* < 2^48 * 2^8 */
        for (i = 0; i < n; i++)
            if (!qpk__finite(qpk__param_bits(t->centroids, i, t->centroids_dtype))) return QPK_E_PARAM;
    } else {
        for (g = 0; g < t->groups; g++) /* a NaN or infinite scale fails too: level >= 1 */
            if (!qpk__scaled_finite(qpk__top_level(t, g), qpk__f32(qpk__param_bits(t->scale, g, t->scale_dtype))))
                return QPK_E_PARAM;
    }
    return QPK_OK;
}

int qpk_decode_range(const qpk_tensor *t, uint64_t first, size_t n, float *out)
{
    int rc = qpk_tensor_check(t);
    uint64_t inner = 1, along = 1, blk, nblk, o, a, r, ab, ai, bit, g, cur = UINT64_MAX, base = 0;
    uint32_t d;
    unsigned bits, top, state = 0;
    size_t i;
    int zp = 0;
    float scale = 0.0f;
    if (rc) return rc;
    if (first > t->count || (uint64_t)n > t->count - first) return QPK_E_RANGE;
    if (n == 0) return QPK_OK;
    if (!out) return QPK_E_ARG;

    /* Index i of the tensor is ((o * along) + a) * inner + r around the grouped axis; counters are
     * stepped per weight rather than divided out, and the group's parameters reloaded only when
     * the group changes. Here count > 0, so every dimension is >= 1. */
    if (t->axis >= 0) {
        along = t->shape[t->axis];
        for (d = (uint32_t)t->axis + 1; d < t->ndim; d++) inner *= t->shape[d];
    }
    blk = t->block ? t->block : along; /* per channel: one "block" spans the axis, never wraps */
    nblk = along / blk + (along % blk != 0);
    r = first % inner;
    a = first / inner % along;
    o = first / inner / along;
    ab = a / blk;
    ai = a % blk;

    bits = t->bits;
    top = (1u << (bits - 1)) - 1u; /* M */
    if (t->scheme == QPK_DQ) /* the state at `first`: the parities of every code before it */
        for (bit = 0; bit < first * bits; bit += bits) state = qpk__dq_next(state, (int)qpk__code_at(t->codes, bit, bits) - (int)top);
    bit = first * bits; /* first < 2^48, bits <= 16: no overflow */
    for (i = 0; i < n; i++) {
        unsigned code = qpk__code_at(t->codes, bit, bits);
        bit += bits;

        g = t->axis < 0 ? 0 : t->block == 0 ? a : (o * nblk + ab) * inner + r;
        if (g != cur) { /* a new group: its parameters, checked against their ranges (qpk_params_check) */
            cur = g;
            if (t->scheme == QPK_POW2) {
                int32_t e = qpk__emax(t->emax, g);
                if (e < QPK__EMAX_MIN || e > QPK__EMAX_MAX) return QPK_E_PARAM;
                scale = qpk__pow2f(e);
            } else if (t->scheme == QPK_LUT) {
                base = g << bits; /* the group's 2^bits centroids, each checked as it is read */
            } else {
                scale = qpk__f32(qpk__param_bits(t->scale, g, t->scale_dtype)); /* float16: widened exactly */
                if (!qpk__scaled_finite(qpk__top_level(t, g), scale)) return QPK_E_PARAM;
            }
            if (t->scheme == QPK_ASYM) zp = t->zero_point[g];
        }

        if (t->scheme == QPK_ASYM) {
            out[i] = (float)((int)code - zp) * scale; /* exact small integer times scale: one rounding */
        } else if (t->scheme == QPK_SYM) {
            out[i] = (float)((int)code - (int)top) * scale;
        } else if (t->scheme == QPK_DQ) {
            int k = (int)code - (int)top, level = 2 * k;
            if (state >> 1) level -= (k > 0) - (k < 0); /* quantizer 1: the odd levels and 0 */
            out[i] = (float)level * scale;                /* |level| < 2^17: exact, one rounding */
            state = qpk__dq_next(state, k);
        } else if (t->scheme == QPK_LUT) {
            /* the centroid's bits stored as they are: no float operation */
            uint32_t u = qpk__param_bits(t->centroids, base + code, t->centroids_dtype);
            if (!qpk__finite(u)) return QPK_E_PARAM;
            memcpy(out + i, &u, sizeof u);
        } else {
            /* +-2^(m - M) built from its bits (m - M >= -126: a normal float, exact; m = 0 gives a
             * zero that keeps the sign bit), times 2^emax in one multiplication, as the Python
             * reader does: with emax in its range the product is exact, 2^-149 at the least. */
            unsigned m = code & top;
            uint32_t sign = (uint32_t)(code >> (bits - 1)) << 31;
            out[i] = qpk__f32(sign | (m ? (uint32_t)(m + 127u - top) << 23 : 0u)) * scale;
        }

        if (++r == inner) {
            r = 0;
            if (++ai == blk) {
                ai = 0;
                ab++;
            }
            if (++a == along) {
                a = ai = ab = 0;
                o++;
            }
        }
    }
    return QPK_OK;
}

int qpk_decode_tensor(const qpk_tensor *t, float *out)
{
    int rc = qpk_tensor_check(t);
    if (rc) return rc;
    if (t->count > (uint64_t)SIZE_MAX) return QPK_E_LIMIT;
    return qpk_decode_range(t, 0, (size_t)t->count, out);
}

/* ---- ans code streams (FORMAT.md "ans code streams") ------------------------------------------ */

#define QPK__ANS_LOW UINT64_C(65536) /* the decoder's state stays at or above 2^16 */
#define QPK__ANS_CONTEXTS 16u

typedef struct qpk__ans_table {
    const uint8_t *bytes; /* weight bytes (one per run of 2^shift symbols) or knot bytes (profile) */
    uint32_t first, span, shift, peak;
    int profile;
} qpk__ans_table;

/* v(w): a table weight's value, 16 steps per octave */
static uint32_t qpk__ans_value(unsigned w)
{
    static const uint16_t mant[16] = {1024, 1069, 1117, 1166, 1218, 1272, 1328, 1387,
                                      1448, 1512, 1579, 1649, 1722, 1798, 1878, 1961};
    return w ? (uint32_t)mant[(w - 1) & 15u] << ((w - 1) >> 4) : 0u;
}

/* the knot distance after d: 1, 2, 3, then 2^e and 3 * 2^(e-1) */
static uint32_t qpk__knot_next(uint32_t d) { return d < 3 ? d + 1 : (d & (d - 1)) == 0 ? d + d / 2 : d + d / 3; }

/* knot bytes of a profile side of n symbols: one per knot distance below n, and n itself */
static uint32_t qpk__side_knots(uint32_t n)
{
    uint32_t c = 0, d;
    if (!n) return 0;
    for (d = 1; d < n; d = qpk__knot_next(d)) c++;
    return c + 1;
}

/* One table (weights or profile) at data[*pos]; k = 2^bits symbols. */
static int qpk__ans_table_read(const uint8_t *data, size_t len, size_t *pos, uint32_t k, int profile, qpk__ans_table *tb)
{
    int wide = k > 256u;
    size_t head = profile ? (wide ? 6u : 3u) : (wide ? 5u : 2u), n, i;
    const uint8_t *p = data + *pos;
    if (len - *pos < head) return QPK_E_STREAM;
    tb->profile = profile;
    tb->first = wide ? qpk__le16(p) : p[0];
    tb->span = (wide ? qpk__le16(p + 2) : p[1]) + 1u;
    tb->shift = !profile && wide ? p[4] : 0u;
    tb->peak = profile ? (wide ? qpk__le16(p + 4) : p[2]) : 0u;
    if (tb->first + tb->span > k || tb->shift > 15u || tb->peak >= tb->span) return QPK_E_STREAM;
    if (profile) n = 1u + qpk__side_knots(tb->peak) + qpk__side_knots(tb->span - 1u - tb->peak);
    else n = ((size_t)tb->span + ((size_t)1 << tb->shift) - 1u) >> tb->shift;
    if (len - *pos - head < n) return QPK_E_STREAM;
    tb->bytes = p + head;
    if (profile) {
        for (i = 0; i < n; i++)
            if (!tb->bytes[i]) return QPK_E_STREAM; /* every symbol of the span keeps a weight */
    } else if (!tb->bytes[0] || !tb->bytes[(tb->span - 1u) >> tb->shift]) {
        return QPK_E_STREAM; /* the span starts and ends on a present symbol */
    }
    *pos += head + n;
    return QPK_OK;
}

/* Values v(w) of one profile side into v[c -+ t], t = 1..n, interpolated between its knots. */
static void qpk__ans_side(uint32_t *v, uint32_t c, int left, uint32_t n, unsigned w0, const uint8_t *knots)
{
    uint32_t d = 0, next, t, u, span;
    unsigned a = w0, b;
    while (d < n) {
        next = qpk__knot_next(d);
        if (next > n) next = n;
        b = *knots++;
        span = next - d;
        for (t = d + 1; t <= next; t++) {
            u = t - d;
            v[left ? c - t : c + t] = qpk__ans_value((a * (span - u) + b * u + span / 2) / span);
        }
        d = next;
        a = b;
    }
}

/* A table's cumulative frequencies: cum[0..k], cum[s + 1] - cum[s] = f[s], cum[k] = 2^P. */
static int qpk__ans_cum(const qpk__ans_table *tb, uint32_t k, unsigned precision, uint32_t *cum)
{
    uint32_t *v = cum + 1, s, end = tb->first + tb->span, top, m = UINT32_C(1) << precision;
    uint64_t total = 0, f, sum = 0;
    int64_t rest;
    memset(cum, 0, ((size_t)k + 1) * sizeof *cum);
    if (tb->profile) {
        uint32_t c = tb->first + tb->peak, nl = qpk__side_knots(tb->peak);
        v[c] = qpk__ans_value(tb->bytes[0]);
        qpk__ans_side(v, c, 1, tb->peak, tb->bytes[0], tb->bytes + 1);
        qpk__ans_side(v, c, 0, tb->span - 1u - tb->peak, tb->bytes[0], tb->bytes + 1 + nl);
    } else {
        for (s = tb->first; s < end; s++) v[s] = qpk__ans_value(tb->bytes[(s - tb->first) >> tb->shift]);
    }
    for (s = tb->first; s < end; s++) total += v[s];
    if (!total) return QPK_E_STREAM;
    top = tb->first; /* the first symbol of the largest frequency (the span starts on a present one) */
    for (s = tb->first; s < end; s++) {
        if (!v[s]) continue;
        f = (uint64_t)v[s] * m / total; /* < 2^26 * 2^15 */
        if (f < 1) f = 1;
        v[s] = (uint32_t)f;
        sum += f;
        if (v[s] > v[top]) top = s;
    }
    rest = (int64_t)v[top] + ((int64_t)m - (int64_t)sum); /* the rest goes to it, which must stay >= 1 */
    if (rest < 1) return QPK_E_STREAM;
    v[top] = (uint32_t)rest;
    for (s = 0; s < k; s++) cum[s + 1] += cum[s];
    return QPK_OK;
}

/* hb(S): half octaves of a magnitude sum */
static unsigned qpk__half_octaves(uint32_t sum)
{
    unsigned e = 0;
    if (!sum) return 0;
    while (sum >> (e + 1)) e++;
    return 2u * e + 1u + (e >= 1 ? (sum >> (e - 1)) & 1u : 0u);
}

#define QPK__ANS_SUMS 2048u /* a context per magnitude sum: at most 8 codes of magnitude 255, 0..2040 */
#define QPK__ANS_BUCKET_BITS 10u /* codes past a byte: the symbol at each of 2^10 evenly spaced slots narrows the search */

/* workspace bytes before the packed codes: the frequency tables of a stream of `bits`-bit codes
 * (one per context, 2^bits + 1 entries) and, for codes of up to 8 bits, the context of each sum */
static uint64_t qpk__ans_tables(unsigned bits)
{
    return bits <= 8 ? ((UINT64_C(1) << bits) + 1) * 4 * QPK__ANS_CONTEXTS + QPK__ANS_SUMS
                     : ((UINT64_C(1) << bits) + 1) * 4 + ((UINT64_C(1) << QPK__ANS_BUCKET_BITS) + 1) * 2;
}

size_t qpk_unpack_size(const qpk_tensor *t)
{
    uint64_t packed, tables;
    if (!t || t->codec != QPK_ANS || t->bits == 0 || t->bits > 16) return 0;
    if (t->count > (UINT64_MAX - 7) / 16) return 0;
    packed = (t->count * t->bits + 7) / 8;
    tables = qpk__ans_tables(t->bits);
    if (tables > (uint64_t)SIZE_MAX || packed > (uint64_t)SIZE_MAX - tables) return 0; /* a 16-bit size_t too */
    return (size_t)(tables + packed);
}

int qpk_unpack(const qpk_tensor *t, void *work, size_t work_len, qpk_tensor *raw)
{
    const uint8_t *data, *words;
    uint8_t *out;
    uint32_t *cum, k, m, mask, ring[8] = {0}, total = 0, mag;
    qpk__ans_table tb[QPK__ANS_CONTEXTS];
    unsigned bits, precision, model, window = 0, contexts = 1, offset = 0, rule = 0, center = 0, ctx = 0, c, r = 0, buckets = 0;
    size_t len, pos, packed, need, nwords, ptr = 0;
    uint64_t x, i, count;
    int rc;
    if (!t || !raw) return QPK_E_ARG;
    if (t->codec == QPK_RAW) {
        *raw = *t;
        return qpk_tensor_check(t);
    }
    if (t->codec != QPK_ANS) return QPK_E_CODEC;
    need = qpk_unpack_size(t);
    if (!need) return qpk__scheme_bits(t->scheme, t->bits) ? QPK_E_LIMIT : QPK_E_ARG;
    if (!work || work_len < need) return QPK_E_SPACE;
    if (!t->codes && t->codes_len) return QPK_E_ARG;
    /* the stream, before *raw (which may be *t) points the codes at the workspace */
    data = t->codes, len = t->codes_len, count = t->count;
    bits = t->bits, k = UINT32_C(1) << bits;
    packed = (size_t)((count * bits + 7) / 8);
    cum = (uint32_t *)work; /* the tables first, where the caller's alignment holds */
    out = (uint8_t *)work + (size_t)qpk__ans_tables(bits);
    *raw = *t;
    raw->codec = QPK_RAW, raw->codes = out, raw->codes_len = packed;
    if ((rc = qpk_tensor_check(raw)) != QPK_OK) return rc; /* shape, grouping, parameters */

    /* header, model, tables (FORMAT.md "ans code streams") */
    if (len < 4 || data[0] != 1 || data[1] != bits || data[2] < 1 || data[2] > 15) return QPK_E_STREAM;
    precision = data[2], model = data[3], pos = 4;
    if ((model & 0x7Fu) == 1) {
        if (bits > 8 || len - pos < 5) return QPK_E_STREAM;
        window = data[4], contexts = data[5], offset = data[6], rule = data[7], center = data[8];
        if (window < 1 || window > 8 || contexts < 2 || contexts > QPK__ANS_CONTEXTS || offset > 63 || rule > 1 ||
            center >= k || (rule == 1 && (bits < 2 || center != 0)))
            return QPK_E_STREAM;
        pos += 5;
    } else if ((model & 0x7Fu) != 0) {
        return QPK_E_STREAM;
    }
    for (c = 0; c < contexts; c++)
        if ((rc = qpk__ans_table_read(data, len, &pos, k, (model & 0x80u) != 0, &tb[c])) != QPK_OK) return rc;
    if (len - pos < 4 || (len - pos - 4) % 2) return QPK_E_STREAM;
    x = qpk__le32(data + pos);
    if (x < QPK__ANS_LOW) return QPK_E_STREAM;
    words = data + pos + 4, nwords = (len - pos - 4) / 2;

    for (c = 0; c < contexts; c++)
        if ((rc = qpk__ans_cum(&tb[c], k, precision, cum + (size_t)c * (k + 1))) != QPK_OK) return rc;
    if (contexts > 1) { /* the context of every magnitude sum the window can hold */
        uint8_t *ctx_of = (uint8_t *)(cum + (size_t)QPK__ANS_CONTEXTS * (k + 1));
        uint32_t sum, top = window * (rule ? (k >> 1) - 1u : (center > k - 1 - center ? center : k - 1 - center));
        for (sum = 0; sum <= top; sum++) {
            c = qpk__half_octaves(sum);
            ctx_of[sum] = (uint8_t)(c <= offset ? 0u : c - offset >= contexts ? contexts - 1 : c - offset);
        }
    }
    if (bits > 8) { /* one table of up to 2^16 symbols: the symbol holding each bucket's first slot */
        uint16_t *start = (uint16_t *)(cum + (k + 1));
        uint32_t b, s = tb[0].first, end = tb[0].first + tb[0].span - 1;
        buckets = precision < QPK__ANS_BUCKET_BITS ? precision : QPK__ANS_BUCKET_BITS;
        for (b = 0; b < (UINT32_C(1) << buckets); b++) {
            while (cum[s + 1] <= b << (precision - buckets)) s++; /* ends: cum[end + 1] = 2^P above every slot */
            start[b] = (uint16_t)s;
        }
        start[b] = (uint16_t)end; /* past the last slot: the span's last symbol */
    }
    memset(out, 0, packed);
    m = UINT32_C(1) << precision, mask = m - 1;
    for (i = 0; i < count; i++) {
        const uint32_t *ct = cum + (size_t)ctx * (k + 1);
        uint32_t slot = (uint32_t)(x & mask), code = tb[ctx].first, n = tb[ctx].span, half;
        uint64_t bit = i * bits;
        size_t at = (size_t)(bit >> 3);
        unsigned sh = (unsigned)(bit & 7u);
        if (bits > 8) { /* between the symbols holding this slot's bucket's first slot and the next's */
            const uint16_t *start = (const uint16_t *)(cum + (k + 1));
            uint32_t b = slot >> (precision - buckets);
            code = start[b], n = (uint32_t)start[b + 1] - start[b] + 1u;
        }
        /* the symbol whose slots hold `slot`: the last s of the range with cum[s] <= slot, which has a
         * frequency (a symbol after it starts above the slot); halving without branches */
        while (n > 1) {
            half = n >> 1;
            code = ct[code + half] <= slot ? code + half : code;
            n -= half;
        }
        x = (uint64_t)(ct[code + 1] - ct[code]) * (x >> precision) + slot - ct[code];
        if (x < QPK__ANS_LOW) {
            if (ptr == nwords) return QPK_E_STREAM; /* runs out of words */
            x = x << 16 | qpk__le16(words + 2 * ptr);
            ptr++;
        }
        out[at] |= (uint8_t)(code << sh);
        if (sh + bits > 8u) out[at + 1] |= (uint8_t)(code >> (8u - sh));
        if (sh + bits > 16u) out[at + 2] |= (uint8_t)(code >> (16u - sh));
        if (contexts > 1) { /* the next code's context: the magnitudes of the `window` codes before it */
            mag = rule ? code & ((1u << (bits - 1)) - 1u) : code > center ? code - center : center - code;
            total += mag - ring[r];
            ring[r] = mag;
            r = r + 1 == window ? 0 : r + 1;
            ctx = ((const uint8_t *)(cum + (size_t)QPK__ANS_CONTEXTS * (k + 1)))[total];
        }
    }
    if (x != QPK__ANS_LOW || ptr != nwords) return QPK_E_STREAM; /* does not end as stated */
    return QPK_OK;
}

const qpk_tensor *qpk_find_tensor(const qpk_tensor *table, size_t n, const char *name)
{
    size_t i, len;
    if (!table || !name) return NULL;
    len = strlen(name);
    for (i = 0; i < n; i++)
        if (table[i].name && table[i].name_len == len && memcmp(table[i].name, name, len) == 0) return &table[i];
    return NULL;
}

const char *qpk_strerror(int err)
{
    switch (err) {
    case QPK_OK: return "ok";
    case QPK_E_ARG: return "invalid argument or tensor descriptor";
    case QPK_E_RANGE: return "index or element range out of bounds";
    case QPK_E_SIZE: return "buffer length does not match the header";
    case QPK_E_MAGIC: return "not a .qpk container (bad magic)";
    case QPK_E_CRC: return "header checksum mismatch";
    case QPK_E_VERSION: return "unsupported container major version";
    case QPK_E_HEADER: return "invalid header field";
    case QPK_E_CHECKSUM: return "metadata or blob checksum mismatch";
    case QPK_E_MSGPACK: return "metadata is not well-formed msgpack";
    case QPK_E_META: return "metadata field missing or invalid";
    case QPK_E_BLOB: return "invalid blob table";
    case QPK_E_TENSOR: return "invalid tensor entry";
    case QPK_E_LIMIT: return "beyond a limit of this decoder";
    case QPK_E_CODEC: return "stored coded: ans codes need qpk_unpack first; zstd codes or coded parameters: export with --to c";
    case QPK_E_NOTFOUND: return "no such tensor";
    case QPK_E_STREAM: return "invalid ans code stream";
    case QPK_E_SPACE: return "workspace smaller than qpk_unpack_size";
    default: return "unknown error";
    }
}

#ifndef QPK_NO_READER

/* ---- checksums ------------------------------------------------------------------------------- */

uint32_t qpk_crc32(const void *data, size_t n)
{
    /* bitwise, no table: it only ever covers the 72 header bytes */
    const uint8_t *p = (const uint8_t *)data;
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    int k;
    for (i = 0; i < n; i++) {
        c ^= p[i];
        for (k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static const uint32_t qpk__k256[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u,
};

static uint32_t qpk__ror(uint32_t x, unsigned n) { return x >> n | x << (32u - n); }

static void qpk__sha256_block(uint32_t h[8], const uint8_t *p)
{
    uint32_t w[64], s[8], t1, t2;
    int i;
    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 = qpk__ror(w[i - 15], 7) ^ qpk__ror(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = qpk__ror(w[i - 2], 17) ^ qpk__ror(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(s, h, sizeof s);
    for (i = 0; i < 64; i++) {
        uint32_t a = s[0], e = s[4];
        t1 = s[7] + (qpk__ror(e, 6) ^ qpk__ror(e, 11) ^ qpk__ror(e, 25)) + ((e & s[5]) ^ (~e & s[6])) + qpk__k256[i] + w[i];
        t2 = (qpk__ror(a, 2) ^ qpk__ror(a, 13) ^ qpk__ror(a, 22)) + ((a & s[1]) ^ (a & s[2]) ^ (s[1] & s[2]));
        s[7] = s[6], s[6] = s[5], s[5] = e, s[4] = s[3] + t1;
        s[3] = s[2], s[2] = s[1], s[1] = a, s[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++) h[i] += s[i];
}

void qpk_sha256(const void *data, size_t n, uint8_t out[32])
{
    static const uint32_t init[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                     0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    const uint8_t *p = (const uint8_t *)data;
    uint8_t tail[128];
    uint32_t h[8];
    uint64_t nbits = (uint64_t)n * 8u;
    size_t left = n, end;
    int i;
    memcpy(h, init, sizeof h);
    for (; left >= 64; left -= 64, p += 64) qpk__sha256_block(h, p);
    /* the last partial block, a 1 bit, zeros and the message length in bits, big-endian */
    memset(tail, 0, sizeof tail);
    if (left) memcpy(tail, p, left);
    tail[left] = 0x80;
    end = left < 56 ? 64 : 128;
    for (i = 0; i < 8; i++) tail[end - 1 - (size_t)i] = (uint8_t)(nbits >> (8 * i));
    qpk__sha256_block(h, tail);
    if (end == 128) qpk__sha256_block(h, tail + 64);
    for (i = 0; i < 32; i++) out[i] = (uint8_t)(h[i / 4] >> (24 - 8 * (i % 4)));
}

/* ---- msgpack: a bounded reader of one value at a time ------------------------------------------ */

/* Nesting allowed anywhere in the metadata (qpack writes 4 levels). Skipping uses an explicit
 * stack of this depth, so no input recurses the C stack. */
#ifndef QPK_MAX_DEPTH
#define QPK_MAX_DEPTH 32
#endif
#define QPK__MAX_ARRAY 4000001u /* FORMAT.md's limits on the items of an array (the blob table's, MAX_BLOBS) */
#define QPK__MAX_MAP 2000000u   /* and on the pairs of a map, as the Python reader bounds them */
#define QPK__MAX_TENSORS 1000000u
#define QPK__MAX_NAME 65536u    /* characters of a tensor's name or key */

enum { QPK__NIL, QPK__BOOL, QPK__INT, QPK__FLOAT, QPK__STR, QPK__BIN, QPK__ARRAY, QPK__MAP };

typedef struct {
    const uint8_t *p;
    size_t n, pos;
} qpk__mp;

typedef struct {
    int type;
    int neg;          /* QPK__INT: the value is -u */
    uint64_t u;       /* QPK__INT: magnitude; QPK__BOOL: 0 or 1; QPK__ARRAY: items; QPK__MAP: pairs */
    const uint8_t *s; /* QPK__STR, QPK__BIN: the bytes */
    size_t len;
} qpk__val;

static const uint8_t *qpk__take(qpk__mp *m, size_t k)
{
    const uint8_t *at;
    if (k > m->n - m->pos) return NULL;
    at = m->p + m->pos;
    m->pos += k;
    return at;
}

static uint64_t qpk__be(const uint8_t *p, size_t k)
{
    uint64_t v = 0;
    size_t i;
    for (i = 0; i < k; i++) v = v << 8 | p[i];
    return v;
}

/* Strict UTF-8 (no overlongs, surrogates or code points above U+10FFFF), as Python decodes msgpack
 * strings; *chars gets the length in code points, which is what Python's len() limits. */
static int qpk__utf8(const uint8_t *s, size_t n, size_t *chars)
{
    size_t i = 0, c = 0, k, j;
    uint32_t cp, min;
    while (i < n) {
        uint8_t b = s[i];
        if (b < 0x80) {
            i++;
            c++;
            continue;
        }
        if ((b & 0xE0) == 0xC0) k = 1, cp = b & 0x1Fu, min = 0x80;
        else if ((b & 0xF0) == 0xE0) k = 2, cp = b & 0x0Fu, min = 0x800;
        else if ((b & 0xF8) == 0xF0) k = 3, cp = b & 0x07u, min = 0x10000;
        else return 0;
        if (k >= n - i) return 0;
        for (j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80) return 0;
            cp = cp << 6 | (s[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        i += k + 1;
        c++;
    }
    if (chars) *chars = c;
    return 1;
}

/* Read one item: a scalar whole, or the header of an array or map (its items follow). */
static int qpk__next(qpk__mp *m, qpk__val *v)
{
    const uint8_t *b = qpk__take(m, 1), *x;
    unsigned t;
    size_t k = 0;
    if (!b) return QPK_E_MSGPACK;
    t = *b;
    memset(v, 0, sizeof *v);
    if (t <= 0x7F || t >= 0xE0) { /* positive and negative fixint */
        v->type = QPK__INT;
        v->neg = t >= 0xE0;
        v->u = t >= 0xE0 ? 256u - t : t;
        return QPK_OK;
    }
    if (t <= 0x9F || (t >= 0xDC && t <= 0xDF)) { /* fixmap, fixarray, array 16/32, map 16/32 */
        int map = t <= 0x8F || t >= 0xDE;
        if (t <= 0x9F) {
            v->u = t & 0x0Fu;
        } else {
            k = (t & 1u) ? 4 : 2;
            if (!(x = qpk__take(m, k))) return QPK_E_MSGPACK;
            v->u = qpk__be(x, k);
        }
        v->type = map ? QPK__MAP : QPK__ARRAY;
        /* every item takes at least one byte: a count beyond the bytes left is a lie */
        if (v->u > (map ? QPK__MAX_MAP : QPK__MAX_ARRAY) || (map ? 2 * v->u : v->u) > m->n - m->pos) return QPK_E_MSGPACK;
        return QPK_OK;
    }
    if (t <= 0xBF) { /* fixstr */
        v->type = QPK__STR;
        v->len = t & 0x1Fu;
    } else {
        switch (t) {
        case 0xC0: v->type = QPK__NIL; return QPK_OK;
        case 0xC2: case 0xC3: v->type = QPK__BOOL; v->u = t & 1u; return QPK_OK;
        case 0xCA: case 0xCB: /* floats: allowed in informative fields, never in the ones read */
            v->type = QPK__FLOAT;
            return qpk__take(m, t == 0xCA ? 4 : 8) ? QPK_OK : QPK_E_MSGPACK;
        case 0xCC: case 0xCD: case 0xCE: case 0xCF: /* uint 8/16/32/64 */
            k = (size_t)1 << (t - 0xCC);
            if (!(x = qpk__take(m, k))) return QPK_E_MSGPACK;
            v->type = QPK__INT;
            v->u = qpk__be(x, k);
            return QPK_OK;
        case 0xD0: case 0xD1: case 0xD2: case 0xD3: { /* int 8/16/32/64, two's complement */
            uint64_t raw, sign;
            k = (size_t)1 << (t - 0xD0);
            if (!(x = qpk__take(m, k))) return QPK_E_MSGPACK;
            raw = qpk__be(x, k);
            sign = UINT64_C(1) << (8 * k - 1);
            v->type = QPK__INT;
            v->neg = (raw & sign) != 0;
            /* sign-extended to 64 bits and negated in unsigned arithmetic: the magnitude, even of -2^63 */
            v->u = v->neg ? 0 - (raw | ~((sign << 1) - 1)) : raw;
            return QPK_OK;
        }
        case 0xC4: case 0xC5: case 0xC6: v->type = QPK__BIN; k = (size_t)1 << (t - 0xC4); break;
        case 0xD9: case 0xDA: case 0xDB: v->type = QPK__STR; k = (size_t)1 << (t - 0xD9); break;
        default: return QPK_E_MSGPACK; /* 0xC1 (never used) and extension types: not in qpack metadata */
        }
        if (!(x = qpk__take(m, k))) return QPK_E_MSGPACK;
        v->len = (size_t)qpk__be(x, k);
    }
    if (!(v->s = qpk__take(m, v->len))) return QPK_E_MSGPACK;
    if (v->type == QPK__STR && !qpk__utf8(v->s, v->len, NULL)) return QPK_E_MSGPACK;
    return QPK_OK;
}

/* Skip the rest of a value whose first item v sits at nesting level `depth` (the metadata map is
 * level 1); no container may sit deeper than QPK_MAX_DEPTH. Map keys must be scalars (Python
 * cannot hash an array or map key and refuses the file too). */
static int qpk__skip_rest(qpk__mp *m, const qpk__val *v, int depth)
{
    uint64_t left[QPK_MAX_DEPTH]; /* items still to read in each open container, innermost last */
    unsigned char map[QPK_MAX_DEPTH];
    int top = 0, rc;
    qpk__val x;
    if (v->type != QPK__ARRAY && v->type != QPK__MAP) return QPK_OK;
    if (depth < 1 || depth > QPK_MAX_DEPTH) return QPK_E_MSGPACK;
    left[0] = v->type == QPK__MAP ? 2 * v->u : v->u;
    map[0] = v->type == QPK__MAP;
    while (top >= 0) {
        int key;
        if (left[top] == 0) {
            top--;
            continue;
        }
        key = map[top] && left[top] % 2 == 0;
        left[top]--;
        if ((rc = qpk__next(m, &x)) != QPK_OK) return rc;
        if (x.type == QPK__ARRAY || x.type == QPK__MAP) {
            /* x sits at level depth + top + 1, its slot at index top + 1 <= QPK_MAX_DEPTH - depth */
            if (key || depth + top + 1 > QPK_MAX_DEPTH) return QPK_E_MSGPACK;
            top++;
            left[top] = x.type == QPK__MAP ? 2 * x.u : x.u;
            map[top] = x.type == QPK__MAP;
        }
    }
    return QPK_OK;
}

static int qpk__skip(qpk__mp *m, int depth)
{
    qpk__val v;
    int rc = qpk__next(m, &v);
    return rc ? rc : qpk__skip_rest(m, &v, depth);
}

static int qpk__is(const qpk__val *v, const char *s)
{
    size_t n = strlen(s);
    return v->type == QPK__STR && v->len == n && memcmp(v->s, s, n) == 0;
}

/* A non-negative integer no larger than max. */
static int qpk__uint(const qpk__val *v, uint64_t max, uint64_t *out)
{
    if (v->type != QPK__INT || (v->neg && v->u) || v->u > max) return 0;
    *out = v->u;
    return 1;
}

/* Read the map header at m and find the values of `names` (n of them, n <= 16): at[i] is the
 * metadata offset of names[i]'s value, or 0 when absent. Other keys are skipped; a name given
 * twice is refused (Python would keep the last, a silent disagreement). On return m is past the map. */
static int qpk__fields(qpk__mp *m, int depth, const char *const *names, size_t n, size_t *at, int bad)
{
    qpk__val v, key;
    uint64_t i;
    size_t j;
    int rc;
    if ((rc = qpk__next(m, &v)) != QPK_OK) return rc;
    if (v.type != QPK__MAP) return bad;
    if (depth < 1 || depth > QPK_MAX_DEPTH) return QPK_E_MSGPACK;
    for (j = 0; j < n; j++) at[j] = 0;
    for (i = 0; i < v.u; i++) {
        if ((rc = qpk__next(m, &key)) != QPK_OK) return rc;
        if (key.type == QPK__ARRAY || key.type == QPK__MAP) return QPK_E_MSGPACK;
        for (j = 0; j < n && !qpk__is(&key, names[j]); j++) continue;
        if (j < n) {
            if (at[j]) return bad;
            at[j] = m->pos;
        }
        if ((rc = qpk__skip(m, depth + 1)) != QPK_OK) return rc;
    }
    return QPK_OK;
}

/* ---- the blob table ---------------------------------------------------------------------------- */

typedef struct {
    uint64_t kind, codec, offset, length, raw_length;
    const uint8_t *sha256;
} qpk__blob;

enum { QPK__GRAPH = 0, QPK__CODES = 1, QPK__PARAM = 2 };

/* One row [kind, codec, offset, length, raw_length, sha256]; its fields typed, not yet related. */
static int qpk__blob_row(qpk__mp *m, qpk__blob *b)
{
    qpk__val v;
    uint64_t *f[5];
    int i, rc;
    f[0] = &b->kind, f[1] = &b->codec, f[2] = &b->offset, f[3] = &b->length, f[4] = &b->raw_length;
    if ((rc = qpk__next(m, &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY || v.u != 6) return QPK_E_BLOB;
    for (i = 0; i < 5; i++) {
        if ((rc = qpk__next(m, &v)) != QPK_OK) return rc;
        if (v.type != QPK__INT) return QPK_E_BLOB; /* containers here are malformed rows, not skipped */
        if (!qpk__uint(&v, UINT64_MAX, f[i])) return QPK_E_BLOB;
    }
    if ((rc = qpk__next(m, &v)) != QPK_OK) return rc;
    if (v.type != QPK__BIN || v.len != 32) return QPK_E_BLOB;
    b->sha256 = v.s;
    return QPK_OK;
}

/* The workspace's index (qpk_open): the metadata offset of each blob row, then of each tensor
 * entry. Offsets are below 2^28 (the metadata's cap), so while qpk_open runs the top bit of a
 * row's offset marks a blob that a tensor has named. */
static const uint32_t qpk__owned = 0x80000000u, qpk__offset = 0x7FFFFFFFu;

/* Row `index` of a validated table, in constant time through the index. */
static int qpk__blob_at(const qpk_file *f, const uint32_t *rows, uint64_t index, qpk__blob *b)
{
    qpk__mp m;
    if (index >= f->blob_count) return QPK_E_TENSOR;
    m.p = f->data + 80, m.n = f->meta_length, m.pos = rows[index] & qpk__offset;
    return qpk__blob_row(&m, b);
}

/* ---- tensor entries ------------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *name, *key;
    size_t name_len, key_len, key_at; /* key_at: the metadata offset of the key's value */
    uint32_t ndim;
    uint64_t dims[QPK_MAX_RANK], count, groups, block;
    int32_t axis;
    unsigned scheme, bits, dtype, codec;
    uint64_t codes, params[2];
    unsigned param_dtype[2]; /* QPK__P_*: how each parameter is stored */
    int params_coded;        /* a parameter blob stored with a codec (its values cannot be read here) */
    qpk__blob code_blob, param_blob[2];
} qpk__entry;

enum { QPK__F_NAME, QPK__F_KEY, QPK__F_SHAPE, QPK__F_DTYPE, QPK__F_SCHEME, QPK__F_BITS, QPK__F_AXIS,
       QPK__F_BLOCK, QPK__F_CODES, QPK__F_PARAMS, QPK__F_PARAM_DTYPES, QPK__F_COUNT };

static const char *const qpk__entry_fields[QPK__F_COUNT] = {"name", "key", "shape", "dtype", "scheme", "bits",
                                                           "axis", "block", "codes", "params", "param_dtypes"};
static const char *const qpk__dtypes[4] = {"float32", "float16", "bfloat16", "float64"};
static const uint8_t qpk__dtype_sizes[4] = {4, 2, 2, 8};

/* Parameter storage dtypes, as the metadata spells them, and their sizes in bytes. */
enum { QPK__P_F4, QPK__P_F2, QPK__P_U1, QPK__P_I2 };
static const char *const qpk__param_dtypes[4] = {"<f4", "<f2", "<u1", "<i2"};
static const uint8_t qpk__param_sizes[4] = {4, 2, 1, 2};

/* FORMAT.md's scheme table, indexed by QPK_ASYM...: each parameter's name, default dtype and the
 * alternative a tensor may choose in `param_dtypes` (the default again when there is none). */
typedef struct {
    const char *name;
    uint8_t dtype, other;
} qpk__param_spec;

typedef struct {
    const char *name;
    unsigned nparams;
    qpk__param_spec params[2];
} qpk__scheme_spec;

#define QPK__SCHEMES 5
static const qpk__scheme_spec qpk__scheme_table[QPK__SCHEMES] = {
    {"asym", 2, {{"scale", QPK__P_F4, QPK__P_F2}, {"zero_point", QPK__P_U1, QPK__P_U1}}},
    {"sym", 1, {{"scale", QPK__P_F4, QPK__P_F2}, {"", QPK__P_F4, QPK__P_F4}}},
    {"pow2", 1, {{"emax", QPK__P_I2, QPK__P_I2}, {"", QPK__P_F4, QPK__P_F4}}},
    {"lut", 1, {{"centroids", QPK__P_F2, QPK__P_F4}, {"", QPK__P_F4, QPK__P_F4}}},
    {"dq", 1, {{"scale", QPK__P_F4, QPK__P_F2}, {"", QPK__P_F4, QPK__P_F4}}},
};

/* The value at metadata offset `at`, which must be a scalar (fields read here never nest). */
static int qpk__scalar_at(const qpk_file *f, size_t at, qpk__val *v)
{
    qpk__mp m;
    m.p = f->data + 80, m.n = f->meta_length, m.pos = at;
    return qpk__next(&m, v);
}

/* A required scalar field of a tensor entry (at: where qpk__fields found it, 0 when absent). */
static int qpk__field(const qpk_file *f, size_t at, qpk__val *v)
{
    return at ? qpk__scalar_at(f, at, v) : QPK_E_TENSOR;
}

/* Blob `index`, named by a tensor entry: of `kind`; and while qpk_open runs (`owned`: the index,
 * writable), named by no entry before (FORMAT.md: each code and parameter blob belongs to one
 * tensor), then marked. */
static int qpk__entry_blob(const qpk_file *f, const uint32_t *rows, uint32_t *owned, uint64_t index, unsigned kind, qpk__blob *b)
{
    int rc = qpk__blob_at(f, rows, index, b);
    if (rc != QPK_OK) return rc;
    if (b->kind != kind) return QPK_E_TENSOR;
    if (owned) {
        if (owned[index] & qpk__owned) return QPK_E_TENSOR; /* another tensor's, or named twice in this one */
        owned[index] |= qpk__owned;
    }
    return QPK_OK;
}

/* Parse and check one tensor entry at m (FORMAT.md "Tensor entries" and "Reading safely"): the
 * same rules, in the same terms, as the Python reader's TensorEntry.from_meta and _check_entry.
 * `owned`: the index, writable, while qpk_open checks that no blob is named twice; else NULL. */
static int qpk__entry_read(const qpk_file *f, qpk__mp *m, const uint32_t *rows, uint32_t *owned, qpk__entry *e)
{
    size_t at[QPK__F_COUNT], chars, pat[2];
    qpk__val v;
    qpk__mp sm;
    uint64_t i, x, zero = 0;
    unsigned j, nparams;
    int rc;
    const qpk__scheme_spec *spec;

    memset(e, 0, sizeof *e);
    if ((rc = qpk__fields(m, 3, qpk__entry_fields, QPK__F_COUNT, at, QPK_E_TENSOR)) != QPK_OK) return rc;

    if ((rc = qpk__field(f, at[QPK__F_NAME], &v)) != QPK_OK) return rc;
    if (v.type != QPK__STR || !qpk__utf8(v.s, v.len, &chars) || chars > QPK__MAX_NAME) return QPK_E_TENSOR;
    e->name = v.s, e->name_len = v.len;
    if ((rc = qpk__field(f, at[QPK__F_KEY], &v)) != QPK_OK) return rc;
    if (v.type != QPK__STR || !qpk__utf8(v.s, v.len, &chars) || chars == 0 || chars > QPK__MAX_NAME) return QPK_E_TENSOR;
    e->key = v.s, e->key_len = v.len, e->key_at = at[QPK__F_KEY];

    if (!at[QPK__F_SHAPE]) return QPK_E_TENSOR;
    sm.p = f->data + 80, sm.n = f->meta_length, sm.pos = at[QPK__F_SHAPE];
    if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY || v.u > QPK_MAX_RANK) return QPK_E_TENSOR;
    e->ndim = (uint32_t)v.u;
    e->count = 1;
    for (i = 0; i < e->ndim; i++) {
        if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
        if (!qpk__uint(&v, QPK__MAX_DIM - 1, &e->dims[i])) return QPK_E_TENSOR;
        if (e->dims[i] == 0) zero = 1;
        else if (e->count < QPK__MAX_ELEMENTS) e->count *= e->dims[i]; /* < 2^48 * 2^40: no overflow */
    }
    if (zero) e->count = 0;
    if (e->count >= QPK__MAX_ELEMENTS) return QPK_E_TENSOR;

    if ((rc = qpk__field(f, at[QPK__F_DTYPE], &v)) != QPK_OK) return rc;
    for (j = 0; j < 4 && !qpk__is(&v, qpk__dtypes[j]); j++) continue;
    if (j == 4) return QPK_E_TENSOR;
    e->dtype = j;
    if ((rc = qpk__field(f, at[QPK__F_SCHEME], &v)) != QPK_OK) return rc;
    for (j = 0; j < QPK__SCHEMES && !qpk__is(&v, qpk__scheme_table[j].name); j++) continue;
    if (j == QPK__SCHEMES) return QPK_E_TENSOR; /* also a scheme other writers know and this decoder does not */
    e->scheme = j;
    spec = &qpk__scheme_table[j];
    if ((rc = qpk__field(f, at[QPK__F_BITS], &v)) != QPK_OK) return rc;
    if (!qpk__uint(&v, 16, &x) || !qpk__scheme_bits(e->scheme, (unsigned)x)) return QPK_E_TENSOR;
    e->bits = (unsigned)x;

    e->axis = -1; /* axis and block: absent or nil mean none */
    if (at[QPK__F_AXIS]) {
        if ((rc = qpk__scalar_at(f, at[QPK__F_AXIS], &v)) != QPK_OK) return rc;
        if (v.type != QPK__NIL) {
            if (!qpk__uint(&v, e->ndim ? e->ndim - 1 : 0, &x) || e->ndim == 0) return QPK_E_TENSOR;
            e->axis = (int32_t)x;
        }
    }
    if (at[QPK__F_BLOCK]) {
        if ((rc = qpk__scalar_at(f, at[QPK__F_BLOCK], &v)) != QPK_OK) return rc;
        if (v.type != QPK__NIL && (!qpk__uint(&v, QPK__MAX_DIM - 1, &e->block) || e->block == 0 || e->axis < 0)) return QPK_E_TENSOR;
        if (v.type != QPK__NIL && e->scheme == QPK_DQ) return QPK_E_TENSOR; /* dq has no blocked groups */
    }

    /* params: exactly the scheme's parameter names, each an integer blob index */
    nparams = spec->nparams;
    if (!at[QPK__F_PARAMS]) return QPK_E_TENSOR;
    sm.pos = at[QPK__F_PARAMS];
    if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
    if (v.type != QPK__MAP || v.u != nparams) return QPK_E_TENSOR;
    pat[0] = pat[1] = 0;
    for (i = 0; i < nparams; i++) {
        qpk__val k;
        if ((rc = qpk__next(&sm, &k)) != QPK_OK) return rc;
        for (j = 0; j < nparams && !qpk__is(&k, spec->params[j].name); j++) continue;
        if (j == nparams || pat[j]) return QPK_E_TENSOR;
        pat[j] = 1;
        if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
        if (v.type != QPK__INT) return QPK_E_TENSOR;
        e->params[j] = v.neg ? UINT64_MAX : v.u; /* a negative index is simply out of range */
        e->param_dtype[j] = spec->params[j].dtype;
    }

    /* param_dtypes: absent or nil (every parameter in its default dtype), or a non-empty map from
     * parameters of the scheme to the alternative dtype the scheme table lists for them: a
     * default, a parameter without an alternative or another name is refused, as by Python's
     * TensorEntry.from_meta (and a name given twice, which Python would let the last win) */
    if (at[QPK__F_PARAM_DTYPES]) {
        sm.pos = at[QPK__F_PARAM_DTYPES];
        if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
        if (v.type != QPK__NIL) {
            uint64_t pairs = v.u;
            if (v.type != QPK__MAP || pairs == 0) return QPK_E_TENSOR;
            pat[0] = pat[1] = 0;
            for (i = 0; i < pairs; i++) {
                qpk__val k;
                const qpk__param_spec *ps;
                if ((rc = qpk__next(&sm, &k)) != QPK_OK) return rc;
                for (j = 0; j < nparams && !qpk__is(&k, spec->params[j].name); j++) continue;
                if (j == nparams || pat[j]) return QPK_E_TENSOR;
                pat[j] = 1;
                ps = &spec->params[j];
                if ((rc = qpk__next(&sm, &v)) != QPK_OK) return rc;
                if (ps->other == ps->dtype || !qpk__is(&v, qpk__param_dtypes[ps->other])) return QPK_E_TENSOR;
                e->param_dtype[j] = ps->other;
            }
        }
    }
    if ((rc = qpk__field(f, at[QPK__F_CODES], &v)) != QPK_OK) return rc;
    if (v.type != QPK__INT) return QPK_E_TENSOR;
    e->codes = v.neg ? UINT64_MAX : v.u;

    /* groups, as Grouping.count: 1, S[a], or the shape with S[a] replaced by ceil(S[a] / B) */
    if (e->axis < 0) e->groups = 1;
    else if (!e->block) e->groups = e->dims[e->axis];
    else {
        e->groups = 1;
        for (i = 0; i < e->ndim; i++) {
            x = e->dims[i];
            if (i == (uint64_t)e->axis) x = x / e->block + (x % e->block != 0);
            e->groups *= x; /* each factor <= its dimension: the product stays below 2^48 */
        }
    }

    /* blobs: the right kind, each named once, and exactly the lengths shape, grouping and width imply */
    if ((rc = qpk__entry_blob(f, rows, owned, e->codes, QPK__CODES, &e->code_blob)) != QPK_OK) return rc;
    if (e->code_blob.raw_length != (e->count * e->bits + 7) / 8) return QPK_E_TENSOR;
    e->codec = (unsigned)e->code_blob.codec;
    for (j = 0; j < nparams; j++) {
        /* values per group (lut: 2^bits centroids, else 1) times the size of the chosen dtype:
         * below 2^48 * 2^8 * 4, no overflow */
        uint64_t size = (e->scheme == QPK_LUT ? UINT64_C(1) << e->bits : 1u) * qpk__param_sizes[e->param_dtype[j]];
        if ((rc = qpk__entry_blob(f, rows, owned, e->params[j], QPK__PARAM, &e->param_blob[j])) != QPK_OK) return rc;
        if (e->param_blob[j].raw_length != e->groups * size) return QPK_E_TENSOR;
        if (e->param_blob[j].codec) e->codec = 1u, e->params_coded = 1; /* not for this decoder (QPK_E_CODEC) */
    }
    return QPK_OK;
}

/* The bytes of the string at metadata offset `at`, already validated (no UTF-8 check again). */
static void qpk__str_at(const qpk_file *f, size_t at, const uint8_t **s, size_t *len)
{
    const uint8_t *p = f->data + 80 + at;
    unsigned t = p[0];
    size_t k = t <= 0xBF ? 0 : (size_t)1 << (t - 0xD9); /* fixstr, or str 8/16/32 */
    *len = k ? (size_t)qpk__be(p + 1, k) : (t & 0x1Fu);
    *s = p + 1 + k;
}

/* Order of the keys whose values sit at metadata offsets a and b: bytes, then length. */
static int qpk__key_cmp(const qpk_file *f, uint32_t a, uint32_t b)
{
    const uint8_t *x, *y;
    size_t nx, ny;
    int c;
    qpk__str_at(f, a, &x, &nx);
    qpk__str_at(f, b, &y, &ny);
    c = memcmp(x, y, nx < ny ? nx : ny);
    return c ? c : (nx > ny) - (nx < ny);
}

/* Heapsort of key offsets (no recursion, no allocation, n log n comparisons). */
static void qpk__sift(const qpk_file *f, uint32_t *k, size_t root, size_t n)
{
    for (;;) {
        size_t child = 2 * root + 1;
        uint32_t t;
        if (child >= n) return;
        if (child + 1 < n && qpk__key_cmp(f, k[child], k[child + 1]) < 0) child++;
        if (qpk__key_cmp(f, k[root], k[child]) >= 0) return;
        t = k[root], k[root] = k[child], k[child] = t;
        root = child;
    }
}

static void qpk__sort_keys(const qpk_file *f, uint32_t *k, size_t n)
{
    size_t i;
    uint32_t t;
    for (i = n / 2; i-- > 0;) qpk__sift(f, k, i, n);
    for (i = n; i-- > 1;) {
        t = k[0], k[0] = k[i], k[i] = t;
        qpk__sift(f, k, 0, i);
    }
}

/* ---- the container ------------------------------------------------------------------------------ */

static uint64_t qpk__rd64le(const uint8_t *p) { return (uint64_t)qpk__le32(p) | (uint64_t)qpk__le32(p + 4) << 32; }

static int qpk__zero(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

/* Validate the blob table at metadata offset `at`; rows[i] gets the offset of row i. */
static int qpk__open_blobs(qpk_file *f, size_t at, unsigned flags, uint32_t *rows)
{
    qpk__mp m;
    qpk__val v;
    qpk__blob b;
    uint64_t i, end = 0, payload_len = f->size - f->payload_offset;
    uint8_t digest[32];
    int rc;
    m.p = f->data + 80, m.n = f->meta_length, m.pos = at;
    if ((rc = qpk__next(&m, &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY || v.u != f->blob_count) return QPK_E_META;
    f->blobs_at_ = m.pos;
    for (i = 0; i < v.u; i++) {
        rows[i] = (uint32_t)m.pos; /* below 2^28 */
        if ((rc = qpk__blob_row(&m, &b)) != QPK_OK) return rc;
        if (b.kind > QPK__PARAM || b.codec > QPK_ANS) return QPK_E_BLOB; /* codecs: 0 raw, 1 zstd, 2 ans */
        /* increasing, aligned, inside the payload; raw blobs decode to themselves */
        if (b.offset < end || b.offset % 64 || b.offset > payload_len || b.length > payload_len - b.offset) return QPK_E_BLOB;
        if (b.codec == 0 && b.raw_length != b.length) return QPK_E_BLOB;
        if (!qpk__zero(f->data + f->payload_offset + end, (size_t)(b.offset - end))) return QPK_E_BLOB;
        if (!(flags & QPK_OPEN_TRUST_BLOBS)) {
            qpk_sha256(f->data + f->payload_offset + b.offset, (size_t)b.length, digest);
            if (memcmp(digest, b.sha256, 32) != 0) return QPK_E_CHECKSUM;
        }
        end = b.offset + b.length;
    }
    if (end != payload_len) return QPK_E_BLOB; /* the last blob ends the file */
    return QPK_OK;
}

#define QPK__MAX_GRAPH_BYTES (UINT64_C(1) << 34) /* FORMAT.md: a graph blob's budget never exceeds 2^34 */

/* Validate the tensor list at metadata offset `at`, index[0..blob_count) holding the blob rows:
 * every entry, each blob named by one tensor (the rows' top bits), and keys unique (sorted in
 * index[blob_count..], then compared neighbour to neighbour); then index[blob_count + i] gets the
 * offset of entry i. *zeroed gets the bytes the quantized tensors take in their source dtypes (the
 * graph blob's allowance), saturated at QPK__MAX_GRAPH_BYTES. */
static int qpk__open_tensors(qpk_file *f, size_t at, uint32_t *index, uint64_t *zeroed)
{
    uint32_t *keys = index + f->blob_count, i;
    qpk__mp m;
    qpk__val v;
    qpk__entry e;
    int rc;
    m.p = f->data + 80, m.n = f->meta_length, m.pos = at;
    if ((rc = qpk__next(&m, &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY || v.u != f->tensor_count) return QPK_E_META;
    f->tensors_at_ = m.pos;
    *zeroed = 0;
    for (i = 0; i < f->tensor_count; i++) {
        if ((rc = qpk__entry_read(f, &m, index, index, &e)) != QPK_OK) return rc;
        keys[i] = (uint32_t)e.key_at;
        *zeroed += e.count * qpk__dtype_sizes[e.dtype]; /* < 2^34 + 2^48 * 8 before saturating: no overflow */
        if (*zeroed > QPK__MAX_GRAPH_BYTES) *zeroed = QPK__MAX_GRAPH_BYTES;
    }
    qpk__sort_keys(f, keys, f->tensor_count);
    for (i = 1; i < f->tensor_count; i++)
        if (qpk__key_cmp(f, keys[i - 1], keys[i]) == 0) return QPK_E_TENSOR; /* a key given twice */
    m.pos = f->tensors_at_;
    for (i = 0; i < f->tensor_count; i++) {
        keys[i] = (uint32_t)m.pos;
        if ((rc = qpk__skip(&m, 3)) != QPK_OK) return rc;
    }
    return QPK_OK;
}

/* FORMAT.md's decompression budget, as Python's QpkReader._check_expansion: a blob stored with a
 * codec other than raw may claim at most 64 x length + 4096 bytes decoded; the graph blob may add
 * the quantized tensors' source bytes (`zeroed`), and never more than 2^34 in all. Checked for
 * every blob on open, though this decoder never decompresses one. */
static int qpk__check_budget(const qpk_file *f, const uint32_t *rows, uint64_t graph, uint64_t zeroed)
{
    qpk__blob b;
    uint64_t i, limit;
    int rc;
    for (i = 0; i < f->blob_count; i++) {
        if ((rc = qpk__blob_at(f, rows, i, &b)) != QPK_OK) return rc;
        if (b.codec == 0) continue;
        if (i == graph) {
            /* length < 2^34 here: the sum stays below 2^41 */
            limit = b.length >= QPK__MAX_GRAPH_BYTES ? QPK__MAX_GRAPH_BYTES : 64 * b.length + 4096 + zeroed;
            if (limit > QPK__MAX_GRAPH_BYTES) limit = QPK__MAX_GRAPH_BYTES;
        } else {
            if (b.length > (UINT64_MAX - 4096) / 64) continue; /* a limit above any 64-bit claim */
            limit = 64 * b.length + 4096;
        }
        if (b.raw_length > limit) return QPK_E_BLOB;
    }
    return QPK_OK;
}

/* A graph blob stored raw decodes to its stored bytes, whose SHA-256 the blob table holds (and
 * qpk_open has checked): `graph_sha256` must be it, in lowercase hex, as the Python reader's
 * verify() requires. (A graph stored with zstd is not decompressed here: qpk.h has no zstd.) */
static int qpk__check_graph_sha(const qpk_file *f, size_t at, const uint8_t sha[32])
{
    static const char hex[] = "0123456789abcdef";
    qpk__val v;
    int i, rc;
    if (!at) return QPK_E_META;
    if ((rc = qpk__scalar_at(f, at, &v)) != QPK_OK) return rc;
    if (v.type != QPK__STR || v.len != 64) return QPK_E_META;
    for (i = 0; i < 32; i++)
        if (v.s[2 * i] != (uint8_t)hex[sha[i] >> 4] || v.s[2 * i + 1] != (uint8_t)hex[sha[i] & 15u]) return QPK_E_META;
    return QPK_OK;
}

/* The top-level fields qpk_open reads. */
enum { QPK__T_FORMAT, QPK__T_GRAPH, QPK__T_TENSORS, QPK__T_BLOBS, QPK__T_GRAPH_SHA, QPK__T_COUNT };
static const char *const qpk__top_fields[QPK__T_COUNT] = {"format", "graph", "tensors", "blobs", "graph_sha256"};

/* The header's lengths (FORMAT.md "Header"), checked against each other and the buffer. */
static int qpk__layout(const uint8_t *buf, size_t len, qpk_file *f)
{
    uint64_t meta_len = qpk__rd64le(buf + 16), payload_off = qpk__rd64le(buf + 24), payload_len = qpk__rd64le(buf + 32);
    if (meta_len > (UINT64_C(256) << 20)) return QPK_E_HEADER;
    if (payload_off != (80 + meta_len + 63) / 64 * 64) return QPK_E_HEADER;
    if (payload_off > len || payload_len != len - payload_off) return QPK_E_SIZE;
    f->data = buf;
    f->size = len;
    f->meta_length = (size_t)meta_len;
    f->payload_offset = (size_t)payload_off;
    return QPK_OK;
}

/* The metadata's top map, the offsets of the fields read (at[QPK__T_*], 0 when absent), and the
 * lengths of the blob table and the tensor list, which size the workspace. */
static int qpk__top(qpk_file *f, size_t at[QPK__T_COUNT])
{
    qpk__mp m;
    qpk__val v;
    int rc;
    m.p = f->data + 80, m.n = f->meta_length, m.pos = 0;
    if ((rc = qpk__fields(&m, 1, qpk__top_fields, QPK__T_COUNT, at, QPK_E_META)) != QPK_OK) return rc;
    if (m.pos != m.n) return QPK_E_MSGPACK; /* one msgpack map and nothing after it */
    if (!at[QPK__T_FORMAT] || !at[QPK__T_GRAPH] || !at[QPK__T_TENSORS] || !at[QPK__T_BLOBS]) return QPK_E_META;
    if ((rc = qpk__scalar_at(f, at[QPK__T_BLOBS], &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY) return QPK_E_META;
    f->blob_count = (uint32_t)v.u; /* <= QPK__MAX_ARRAY */
    if ((rc = qpk__scalar_at(f, at[QPK__T_TENSORS], &v)) != QPK_OK) return rc;
    if (v.type != QPK__ARRAY || v.u > QPK__MAX_TENSORS) return QPK_E_META;
    f->tensor_count = (uint32_t)v.u;
    return QPK_OK;
}

/* 4 bytes per blob and per tensor; 0 where that would not fit in a size_t (a 16-bit one) */
static size_t qpk__index_bytes(const qpk_file *f)
{
    uint64_t n = (uint64_t)f->blob_count + f->tensor_count;
    return n > (uint64_t)SIZE_MAX / 4 ? 0 : (size_t)(4 * n);
}

size_t qpk_open_size(const uint8_t *buf, size_t len)
{
    qpk_file f;
    size_t at[QPK__T_COUNT];
    memset(&f, 0, sizeof f);
    if (!buf || len < 80 || qpk__layout(buf, len, &f) != QPK_OK || qpk__top(&f, at) != QPK_OK) return 0;
    return qpk__index_bytes(&f);
}

int qpk_open_ex(const uint8_t *buf, size_t len, unsigned flags, void *work, size_t work_len, qpk_file *out)
{
    static const uint8_t magic[8] = {0x89, 'Q', 'P', 'K', '\r', '\n', 0x1A, '\n'};
    qpk_file f;
    qpk__val v;
    qpk__blob b;
    uint32_t *index = (uint32_t *)work;
    uint64_t graph, zeroed;
    size_t at[QPK__T_COUNT], need;
    uint8_t digest[32];
    int rc;

    if (!out) return QPK_E_ARG;
    memset(out, 0, sizeof *out);
    if (!buf) return QPK_E_ARG;
    if (len < 80) return QPK_E_SIZE;
    if (memcmp(buf, magic, 8) != 0) return QPK_E_MAGIC;
    if (qpk_crc32(buf, 72) != qpk__le32(buf + 72)) return QPK_E_CRC;
    memset(&f, 0, sizeof f);
    f.major = (uint16_t)qpk__le16(buf + 8);
    f.minor = (uint16_t)qpk__le16(buf + 10);
    if (f.major != QPK_FORMAT_MAJOR) return QPK_E_VERSION;
    if (qpk__le32(buf + 12) != 0 || !qpk__zero(buf + 76, 4)) return QPK_E_HEADER;
    if ((rc = qpk__layout(buf, len, &f)) != QPK_OK) return rc;
    qpk_sha256(buf + 80, f.meta_length, digest);
    if (memcmp(digest, buf + 40, 32) != 0) return QPK_E_CHECKSUM;
    if (!qpk__zero(buf + 80 + f.meta_length, f.payload_offset - 80 - f.meta_length)) return QPK_E_BLOB;
    if ((rc = qpk__top(&f, at)) != QPK_OK) return rc;
    need = qpk__index_bytes(&f);
    if (need == 0 && f.blob_count + f.tensor_count) return QPK_E_LIMIT;
    if (need && (!work || work_len < need)) return QPK_E_SPACE;

    if ((rc = qpk__open_blobs(&f, at[QPK__T_BLOBS], flags, index)) != QPK_OK) return rc;
    if ((rc = qpk__scalar_at(&f, at[QPK__T_FORMAT], &v)) != QPK_OK) return rc;
    if (!qpk__is(&v, "onnx") && !qpk__is(&v, "tflite")) return QPK_E_META;
    f.format = (uint8_t)qpk__is(&v, "tflite");
    if ((rc = qpk__open_tensors(&f, at[QPK__T_TENSORS], index, &zeroed)) != QPK_OK) return rc;
    if ((rc = qpk__scalar_at(&f, at[QPK__T_GRAPH], &v)) != QPK_OK) return rc;
    if (!qpk__uint(&v, UINT64_MAX, &graph) || graph >= f.blob_count) return QPK_E_META;
    if ((rc = qpk__blob_at(&f, index, graph, &b)) != QPK_OK) return rc;
    if (b.kind != QPK__GRAPH) return QPK_E_META;
    if (b.codec == 0 && !(flags & QPK_OPEN_TRUST_BLOBS) && (rc = qpk__check_graph_sha(&f, at[QPK__T_GRAPH_SHA], b.sha256)) != QPK_OK)
        return rc;
    if ((rc = qpk__check_budget(&f, index, graph, zeroed)) != QPK_OK) return rc;
    f.graph = (uint32_t)graph;
    f.index_ = index;
    *out = f;
    return QPK_OK;
}

int qpk_open(const uint8_t *buf, size_t len, void *work, size_t work_len, qpk_file *f)
{
    return qpk_open_ex(buf, len, 0, work, work_len, f);
}

/* The metadata position of entry `index` of an opened file. */
static int qpk__seek_entry(const qpk_file *f, uint32_t index, qpk__mp *m)
{
    if (!f || !f->data || index >= f->tensor_count) return QPK_E_RANGE;
    m->p = f->data + 80, m->n = f->meta_length, m->pos = f->index_[f->blob_count + index];
    return QPK_OK;
}

int qpk_get_tensor(const qpk_file *f, uint32_t index, qpk_tensor *t, uint32_t shape[QPK_MAX_RANK])
{
    qpk__mp m;
    qpk__entry e;
    uint32_t d;
    const uint8_t *payload;
    int rc;
    if (!t || !shape) return QPK_E_ARG;
    if ((rc = qpk__seek_entry(f, index, &m)) != QPK_OK) return rc;
    if ((rc = qpk__entry_read(f, &m, f->index_, NULL, &e)) != QPK_OK) return rc;
    for (d = 0; d < e.ndim; d++) {
        if (e.dims[d] > UINT32_MAX) return QPK_E_LIMIT;
        shape[d] = (uint32_t)e.dims[d];
    }
    payload = f->data + f->payload_offset;
    memset(t, 0, sizeof *t);
    t->name = (const char *)e.name, t->name_len = e.name_len;
    t->key = (const char *)e.key, t->key_len = e.key_len;
    t->ndim = e.ndim;
    t->shape = shape;
    t->count = e.count;
    t->scheme = (uint8_t)e.scheme;
    t->bits = (uint8_t)e.bits;
    t->dtype = (uint8_t)e.dtype;
    t->codec = (uint8_t)e.codec;
    t->axis = e.axis;
    t->block = e.block;
    t->groups = e.groups;
    t->codes = payload + e.code_blob.offset;
    t->codes_len = (size_t)e.code_blob.length;
    if (e.scheme == QPK_POW2) {
        t->emax = payload + e.param_blob[0].offset;
    } else if (e.scheme == QPK_LUT) {
        t->centroids = payload + e.param_blob[0].offset;
        t->centroids_dtype = e.param_dtype[0] == QPK__P_F4 ? QPK_FLOAT32 : QPK_FLOAT16;
    } else {
        t->scale = payload + e.param_blob[0].offset;
        t->scale_dtype = e.param_dtype[0] == QPK__P_F2 ? QPK_FLOAT16 : QPK_FLOAT32;
    }
    if (e.scheme == QPK_ASYM) t->zero_point = payload + e.param_blob[1].offset;
    /* the parameters' values against their ranges, where they are stored raw (FORMAT.md) */
    return e.params_coded ? QPK_OK : qpk_params_check(t);
}

int qpk_find(const qpk_file *f, const char *name, size_t len, uint32_t *index)
{
    qpk__mp m;
    size_t at;
    qpk__val v;
    uint32_t i;
    int rc;
    static const char *const field[1] = {"name"};
    if (!f || !f->data || (!name && len) || !index) return QPK_E_ARG;
    if (f->tensor_count == 0) return QPK_E_NOTFOUND;
    if ((rc = qpk__seek_entry(f, 0, &m)) != QPK_OK) return rc;
    for (i = 0; i < f->tensor_count; i++) {
        if ((rc = qpk__fields(&m, 3, field, 1, &at, QPK_E_TENSOR)) != QPK_OK) return rc;
        if ((rc = qpk__scalar_at(f, at, &v)) != QPK_OK) return rc;
        if (v.len == len && (len == 0 || memcmp(v.s, name, len) == 0)) {
            *index = i;
            return QPK_OK;
        }
    }
    return QPK_E_NOTFOUND;
}

#endif /* QPK_NO_READER */
#endif /* QPK_IMPLEMENTATION_DONE */
#endif /* QPK_IMPLEMENTATION */
