/*
 * Reference inference of qpack's digits sample CNN with pow2 weights. Three variants compute the
 * same model from the same container codes (weights.h, written by gen.py):
 *
 *   float  float32 activations; weights dequantized once at start-up, x = ±2^(emax - M + m), and
 *          applied by multiplies;
 *   shift  int32 fixed-point activations; every weight applied as ±(x << s), s = m - 1;
 *   group  the same fixed point, weights of a channel grouped by exponent and sign: each group's
 *          inputs are added up and the sum shifted once, so the inner loops only add.
 *
 * gen.py documents the fixed-point plan and where it rounds; its shift_forward() is the exact model
 * of both fixed-point variants (integer sums are exact, so their order does not matter).
 *
 * Convolutions (3x3, padding 1) are im2col followed, per output channel and block of BLK pixels, by a
 * walk over the channel's non-zero weights, each broadcast over the block: the same loops in all
 * variants, the float one walking the weights in source order, the fixed-point ones by exponent and
 * sign. Dense layers add each input, times its column of weights, to all outputs, in blocks of BLK
 * outputs (float and shift; each weight's own shift count needs a per-lane shift, which SSE2 lacks
 * and AVX2 has), or, in the group variant, sum each output over its weights grouped by exponent
 * (scalar). Fixed trip counts let gcc -O2 vectorize the inner loops whatever it inlines.
 *
 *   cnn float|shift|group IMAGES [PASSES]
 *
 * prints, per image, the prediction and the 10 logits; then, with PASSES > 0, one untimed pass and
 * PASSES timed ones: "pass_ns T1 T2 ..." (wall time of each pass over all images), "pass_cpu_ns ..."
 * (the process's CPU time, which leaves out time spent descheduled on a busy machine), a checksum.
 * IMAGES: u32 count, u32 values per image (64), count x 64 float32 (little-endian, like the host).
 */
#define _POSIX_C_SOURCE 199309L

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weights.h"

#define MTOP ((1 << (QP_BITS - 1)) - 1) /* M: codes 1..M are magnitudes, bit QP_BITS-1 the sign */

enum {
    SIDE = 8, PIX = SIDE * SIDE,      /* 8x8 grey image */
    C1 = 16, C2 = 32, C3 = 64,        /* conv channels */
    K1 = 1 * 9, K2 = C1 * 9, K3 = C2 * 9,
    FLAT = C3 * 2 * 2, F1 = 128, NCLS = 10,
    MAXCOL = K2 * PIX,                /* largest im2col buffer: conv2 */
    LAYERS = 5
};

/* Pixels (dense outputs) per block of the inner loops: a fixed trip count, which gcc -O2 vectorizes.
 * Which size keeps the accumulators in registers depends on the vector width (-DBLK=16 for AVX2). */
#ifndef BLK
#define BLK 8
#endif

enum { FLOAT, SHIFT, GROUP };

/* The header's arrays must have the sizes this file hard-codes (a negative size fails to compile). */
typedef char check_sizes[(sizeof conv1_codes == C1 * K1 && sizeof conv2_codes == C2 * K2 && sizeof conv3_codes == C3 * K3 &&
                          sizeof fc1_codes == F1 * FLAT && sizeof fc2_codes == NCLS * F1 &&
                          sizeof qp_frac == (LAYERS + 1) * sizeof(int) && BLK >= 1 && PIX / 4 % BLK == 0) ? 1 : -1];

/* One layer's weights as a variant walks them: per output channel o, its non-zero weights
 * start[o] .. start[o+1]-1, each naming its input row idx[j] (a row of the im2col matrix, or one input). */
typedef struct {
    int rows, cols;     /* output channels; inputs per output */
    int *start;         /* rows + 1 */
    uint16_t *idx;
    float *w;           /* float: the weight, in the source order */
    float *dense_t;     /* float dense layers: all weights transposed, [input][output padded to BLK] */
    int8_t *dense_q;    /* shift dense layers: the same layout, 0 or ±(s + 1) for a weight ±2^(base + s) */
    uint16_t *count;    /* shift, group: weights ordered by (channel, exponent s, sign); count[(o*MTOP + s)*2 + negative] */
    int32_t *bias;      /* shift, group: the float bias rounded to the channel's accumulator scale */
    int *shift;         /* shift, group: right shift from the accumulator to the next activation's fractional bits */
} Layer;

static Layer net[LAYERS];

/* ---- start-up: the container's codes turned into each variant's tables ---------------------- */

static void *alloc(size_t n)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

static float pow2_value(uint8_t code, int emax)
{
    int m = code & MTOP;
    float v;
    if (m == 0)
        return 0.0f;
    v = ldexpf(1.0f, emax - MTOP + m);
    return (code >> (QP_BITS - 1)) ? -v : v;
}

static void prepare_layer(Layer *L, int variant, const uint8_t *codes, const int16_t *emax, const float *bias, int rows,
                          int cols, int dense, int f_in, int f_out)
{
    int o, k, s, neg, j = 0;
    L->rows = rows;
    L->cols = cols;
    L->start = alloc((size_t)(rows + 1) * sizeof *L->start);
    L->idx = alloc((size_t)rows * cols * sizeof *L->idx);
    if (variant == FLOAT) {
        L->w = alloc((size_t)rows * cols * sizeof *L->w);
        if (dense) {
            int padded = (rows + BLK - 1) / BLK * BLK;
            L->dense_t = alloc((size_t)padded * cols * sizeof *L->dense_t);
            for (o = 0; o < rows; o++)
                for (k = 0; k < cols; k++)
                    L->dense_t[k * padded + o] = pow2_value(codes[o * cols + k], emax[o]);
        }
        for (o = 0; o < rows; o++) {
            L->start[o] = j;
            for (k = 0; k < cols; k++)
                if (codes[o * cols + k] & MTOP) {
                    L->idx[j] = (uint16_t)k;
                    L->w[j++] = pow2_value(codes[o * cols + k], emax[o]);
                }
        }
        L->start[rows] = j;
        return;
    }
    if (dense) {
        int padded = (rows + BLK - 1) / BLK * BLK;
        L->dense_q = alloc((size_t)padded * cols);
        for (o = 0; o < rows; o++)
            for (k = 0; k < cols; k++) {
                uint8_t code = codes[o * cols + k];
                int m = code & MTOP;
                L->dense_q[k * padded + o] = (int8_t)((code >> (QP_BITS - 1)) ? -m : m);
            }
    }
    L->count = alloc((size_t)rows * MTOP * 2 * sizeof *L->count);
    L->bias = alloc((size_t)rows * sizeof *L->bias);
    L->shift = alloc((size_t)rows * sizeof *L->shift);
    for (o = 0; o < rows; o++) {
        int acc_frac = f_in - (emax[o] - MTOP + 1); /* the smallest weight of the window is 1 in the accumulator */
        L->bias[o] = (int32_t)floor(ldexp((double)bias[o], acc_frac) + 0.5);
        L->shift[o] = acc_frac - f_out;
        if (L->shift[o] < 0 || L->shift[o] > 30) {
            fprintf(stderr, "requantization shift %d out of range: weights.h is inconsistent\n", L->shift[o]);
            exit(1);
        }
        L->start[o] = j;
        for (s = 0; s < MTOP; s++)
            for (neg = 0; neg < 2; neg++)
                for (k = 0; k < cols; k++) {
                    uint8_t code = codes[o * cols + k];
                    if ((code & MTOP) == s + 1 && (code >> (QP_BITS - 1)) == neg) {
                        L->idx[j++] = (uint16_t)k;
                        L->count[(o * MTOP + s) * 2 + neg]++;
                    }
                }
    }
    L->start[rows] = j;
}

static void prepare(int variant)
{
    const uint8_t *codes[LAYERS] = {conv1_codes, conv2_codes, conv3_codes, fc1_codes, fc2_codes};
    const int16_t *emax[LAYERS] = {conv1_emax, conv2_emax, conv3_emax, fc1_emax, fc2_emax};
    const float *bias[LAYERS] = {conv1_bias, conv2_bias, conv3_bias, fc1_bias, fc2_bias};
    const int rows[LAYERS] = {C1, C2, C3, F1, NCLS}, cols[LAYERS] = {K1, K2, K3, FLAT, F1};
    int l;
    for (l = 0; l < LAYERS; l++)
        prepare_layer(&net[l], variant, codes[l], emax[l], bias[l], rows[l], cols[l], l >= 3, qp_frac[l], qp_frac[l + 1]);
}

/* ---- im2col, for both number types -------------------------------------------------------- */

/* [c][S][S] -> col[(ci*3 + ky)*3 + kx][y*S + x], zero outside the image (padding 1). One function per
 * type and side, so that rows are copied with a known length (as a generic memcpy, short copies
 * cost more than the convolution around them). */
#define DEFINE_IM2COL(name, type, S)                                              \
    static void name(const type *in, int c, type *col)                            \
    {                                                                             \
        type pad[(S + 2) * (S + 2)] = {0};                                        \
        int ci, ky, kx, y, x;                                                     \
        for (ci = 0; ci < c; ci++, in += S * S) {                                 \
            for (y = 0; y < S; y++)                                               \
                for (x = 0; x < S; x++)                                           \
                    pad[(y + 1) * (S + 2) + x + 1] = in[y * S + x];               \
            for (ky = 0; ky < 3; ky++)                                            \
                for (kx = 0; kx < 3; kx++, col += S * S)                          \
                    for (y = 0; y < S; y++)                                       \
                        for (x = 0; x < S; x++)                                   \
                            col[y * S + x] = pad[(y + ky) * (S + 2) + x + kx];    \
        }                                                                         \
    }

DEFINE_IM2COL(im2col_f8, float, 8)
DEFINE_IM2COL(im2col_f4, float, 4)
DEFINE_IM2COL(im2col_s8, int32_t, 8)
DEFINE_IM2COL(im2col_s4, int32_t, 4)

/* ---- float32 variant ------------------------------------------------------------------------ */

/* 3x3 convolution (col from im2col, n pixels), + bias, ReLU */
static void conv_f(const float *col, int n, const Layer *L, const float *bias, float *out)
{
    int o, b, j, p;
    for (o = 0; o < L->rows; o++)
        for (b = 0; b < n; b += BLK) {
            float acc[BLK];
            for (p = 0; p < BLK; p++)
                acc[p] = bias[o];
            for (j = L->start[o]; j < L->start[o + 1]; j++) {
                const float *x = col + L->idx[j] * n + b;
                float wv = L->w[j];
                for (p = 0; p < BLK; p++)
                    acc[p] += wv * x[p];
            }
            for (p = 0; p < BLK; p++)
                out[o * n + b + p] = acc[p] > 0.0f ? acc[p] : 0.0f;
        }
}

/* y = W x + b, optional ReLU: each input times its column of W added to all outputs */
static void dense_f(const float *x, const Layer *L, const float *bias, int relu, float *y)
{
    float acc[F1];
    int m = (L->rows + BLK - 1) / BLK * BLK, i, o, b;
    for (o = 0; o < m; o++)
        acc[o] = o < L->rows ? bias[o] : 0.0f;
    for (i = 0; i < L->cols; i++) {
        float xv = x[i];
        const float *w = L->dense_t + i * m;
        for (b = 0; b < m; b += BLK)
            for (o = 0; o < BLK; o++)
                acc[b + o] += w[b + o] * xv;
    }
    for (o = 0; o < L->rows; o++)
        y[o] = (relu && acc[o] < 0.0f) ? 0.0f : acc[o];
}

static void pool_f(const float *in, int c, int h, int w, float *out)
{
    int ci, y, x;
    for (ci = 0; ci < c; ci++)
        for (y = 0; y < h / 2; y++)
            for (x = 0; x < w / 2; x++) {
                const float *p = in + (ci * h + 2 * y) * w + 2 * x;
                float a = p[0] > p[1] ? p[0] : p[1], b = p[w] > p[w + 1] ? p[w] : p[w + 1];
                out[(ci * (h / 2) + y) * (w / 2) + x] = a > b ? a : b;
            }
}

static int infer_f(const float *img, double *logits)
{
    static float a1[C1 * PIX], a2[C2 * PIX], p2[C2 * PIX / 4], a3[C3 * PIX / 4], p3[FLAT], h1[F1], out[NCLS];
    static float col[MAXCOL];
    int i, best = 0;
    im2col_f8(img, 1, col);
    conv_f(col, PIX, &net[0], conv1_bias, a1);
    im2col_f8(a1, C1, col);
    conv_f(col, PIX, &net[1], conv2_bias, a2);
    pool_f(a2, C2, SIDE, SIDE, p2);
    im2col_f4(p2, C2, col);
    conv_f(col, PIX / 4, &net[2], conv3_bias, a3);
    pool_f(a3, C3, SIDE / 2, SIDE / 2, p3);
    dense_f(p3, &net[3], fc1_bias, 1, h1);
    dense_f(h1, &net[4], fc2_bias, 0, out);
    for (i = 0; i < NCLS; i++) {
        logits[i] = out[i];
        if (out[i] > out[best])
            best = i;
    }
    return best;
}

/* ---- fixed-point variants ------------------------------------------------------------------- */

/* floor((v + 2^(r-1)) / 2^r), r >= 0: rounding half up. ~(~v >> r) is floor(v / 2^r) for v < 0
 * without relying on how the compiler shifts negative numbers. */
static int32_t round_shift(int32_t v, int r)
{
    if (r == 0)
        return v;
    v += (int32_t)1 << (r - 1);
    return v >= 0 ? v >> r : ~(~v >> r);
}

/* ReLU, then round to the next activation's fractional bits: (max(acc, 0) + 2^(r-1)) >> r */
static int32_t relu_requant(int32_t acc, int r)
{
    int32_t half = r ? (int32_t)1 << (r - 1) : 0;
    return ((acc > 0 ? acc : 0) + half) >> r;
}

/* 3x3 convolution (col from im2col, n pixels), + bias, requantized, ReLU: every weight a shift.
 * Inputs are >= 0 (image, ReLU outputs), so x << s is defined; the plan keeps every sum in int32. */
static void conv_shift(const int32_t *col, int n, const Layer *L, int32_t *out)
{
    int o, b, s, p, j, end;
    for (o = 0; o < L->rows; o++)
        for (b = 0; b < n; b += BLK) {
            const uint16_t *count = L->count + o * MTOP * 2;
            int32_t acc[BLK];
            for (p = 0; p < BLK; p++)
                acc[p] = L->bias[o];
            for (j = L->start[o], s = 0; s < MTOP; s++, count += 2) {
                for (end = j + count[0]; j < end; j++) {
                    const int32_t *x = col + L->idx[j] * n + b;
                    for (p = 0; p < BLK; p++)
                        acc[p] += x[p] << s;
                }
                for (end = j + count[1]; j < end; j++) {
                    const int32_t *x = col + L->idx[j] * n + b;
                    for (p = 0; p < BLK; p++)
                        acc[p] -= x[p] << s;
                }
            }
            for (p = 0; p < BLK; p++)
                out[o * n + b + p] = relu_requant(acc[p], L->shift[o]);
        }
}

/* As conv_shift, one shift per (channel, exponent): each group's inputs are summed first. |part| << s
 * is at most the sum of the group's terms, inside the plan's bound; it is shifted as unsigned, where
 * a negative part shifts without undefined behaviour. */
static void conv_group(const int32_t *col, int n, const Layer *L, int32_t *out)
{
    int o, b, s, p, j, end;
    for (o = 0; o < L->rows; o++)
        for (b = 0; b < n; b += BLK) {
            const uint16_t *count = L->count + o * MTOP * 2;
            int32_t acc[BLK], part[BLK];
            for (p = 0; p < BLK; p++)
                acc[p] = L->bias[o];
            for (j = L->start[o], s = 0; s < MTOP; s++, count += 2) {
                if (count[0] + count[1] == 0)
                    continue;
                for (p = 0; p < BLK; p++)
                    part[p] = 0;
                for (end = j + count[0]; j < end; j++) {
                    const int32_t *x = col + L->idx[j] * n + b;
                    for (p = 0; p < BLK; p++)
                        part[p] += x[p];
                }
                for (end = j + count[1]; j < end; j++) {
                    const int32_t *x = col + L->idx[j] * n + b;
                    for (p = 0; p < BLK; p++)
                        part[p] -= x[p];
                }
                for (p = 0; p < BLK; p++)
                    acc[p] += (int32_t)((uint32_t)part[p] << s);
            }
            for (p = 0; p < BLK; p++)
                out[o * n + b + p] = relu_requant(acc[p], L->shift[o]);
        }
}

/* ±(x << s) for a shift code q = ±(s + 1), 0 for q = 0 (the unsigned shift count is then out of range) */
static int32_t pow2_term(int32_t x, int q)
{
    uint32_t sh = (uint32_t)(q < 0 ? -q : q) - 1u;
    int32_t v = (int32_t)(sh < 31u ? (uint32_t)x << sh : 0u);
    return q < 0 ? -v : v;
}

/* y = W x + b, requantized, optional ReLU: each input shifted by its column's codes into all outputs */
static void dense_shift(const int32_t *x, const Layer *L, int relu, int32_t *y)
{
    int32_t acc[F1];
    int m = (L->rows + BLK - 1) / BLK * BLK, i, o, b;
    for (o = 0; o < m; o++)
        acc[o] = o < L->rows ? L->bias[o] : 0;
    for (i = 0; i < L->cols; i++) {
        int32_t xv = x[i];
        const int8_t *q = L->dense_q + i * m;
        for (b = 0; b < m; b += BLK)
            for (o = 0; o < BLK; o++)
                acc[b + o] += pow2_term(xv, q[b + o]);
    }
    for (o = 0; o < L->rows; o++)
        y[o] = relu ? relu_requant(acc[o], L->shift[o]) : round_shift(acc[o], L->shift[o]);
}

/* y = W x + b, requantized, optional ReLU: each output a sum over its weights grouped by exponent */
static void dense_group(const int32_t *x, const Layer *L, int relu, int32_t *y)
{
    const uint16_t *count = L->count;
    int o, s, j = 0, end;
    for (o = 0; o < L->rows; o++) {
        int32_t acc = L->bias[o];
        for (s = 0; s < MTOP; s++, count += 2) {
            int32_t part = 0;
            for (end = j + count[0]; j < end; j++)
                part += x[L->idx[j]];
            for (end = j + count[1]; j < end; j++)
                part -= x[L->idx[j]];
            acc += (int32_t)((uint32_t)part << s);
        }
        y[o] = relu ? relu_requant(acc, L->shift[o]) : round_shift(acc, L->shift[o]);
    }
}

static void pool_s(const int32_t *in, int c, int h, int w, int32_t *out)
{
    int ci, y, x;
    for (ci = 0; ci < c; ci++)
        for (y = 0; y < h / 2; y++)
            for (x = 0; x < w / 2; x++) {
                const int32_t *p = in + (ci * h + 2 * y) * w + 2 * x;
                int32_t a = p[0] > p[1] ? p[0] : p[1], b = p[w] > p[w + 1] ? p[w] : p[w + 1];
                out[(ci * (h / 2) + y) * (w / 2) + x] = a > b ? a : b;
            }
}

static void conv_s(const int32_t *col, int n, const Layer *L, int32_t *out, int grouped)
{
    if (grouped)
        conv_group(col, n, L, out);
    else
        conv_shift(col, n, L, out);
}

static void dense_s(const int32_t *x, const Layer *L, int relu, int32_t *y, int grouped)
{
    if (grouped)
        dense_group(x, L, relu, y);
    else
        dense_shift(x, L, relu, y);
}

static int infer_s(const float *img, double *logits, int grouped)
{
    static int32_t x0[PIX], col[MAXCOL], a1[C1 * PIX], a2[C2 * PIX], p2[C2 * PIX / 4], a3[C3 * PIX / 4], p3[FLAT], h1[F1],
        out[NCLS];
    const float scale = ldexpf(1.0f, qp_frac[0]);
    int i, best = 0;
    for (i = 0; i < PIX; i++) /* pixels are k/16: exact in any Q format with 4 or more fractional bits */
        x0[i] = (int32_t)(img[i] * scale + 0.5f);
    im2col_s8(x0, 1, col);
    conv_s(col, PIX, &net[0], a1, grouped);
    im2col_s8(a1, C1, col);
    conv_s(col, PIX, &net[1], a2, grouped);
    pool_s(a2, C2, SIDE, SIDE, p2);
    im2col_s4(p2, C2, col);
    conv_s(col, PIX / 4, &net[2], a3, grouped);
    pool_s(a3, C3, SIDE / 2, SIDE / 2, p3);
    dense_s(p3, &net[3], 1, h1, grouped);
    dense_s(h1, &net[4], 0, out, grouped);
    for (i = 0; i < NCLS; i++) {
        logits[i] = ldexp((double)out[i], -qp_frac[LAYERS]); /* exact */
        if (out[i] > out[best])
            best = i;
    }
    return best;
}

/* ---- driver --------------------------------------------------------------------------------- */

static long long now_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static float *read_images(const char *path, uint32_t *count)
{
    uint32_t head[2];
    float *img;
    FILE *f = fopen(path, "rb");
    if (!f || fread(head, sizeof head, 1, f) != 1 || head[1] != PIX || head[0] == 0 || head[0] > 1000000) {
        fprintf(stderr, "%s: not a file of %d-value images\n", path, PIX);
        exit(1);
    }
    img = alloc((size_t)head[0] * PIX * sizeof *img);
    if (fread(img, sizeof *img * PIX, head[0], f) != head[0]) {
        fprintf(stderr, "%s: truncated (%u images announced)\n", path, (unsigned)head[0]);
        exit(1);
    }
    fclose(f);
    *count = head[0];
    return img;
}

static long pass(int variant, const float *img, uint32_t n, int *pred, double *logits)
{
    long sum = 0;
    uint32_t i;
    for (i = 0; i < n; i++) {
        const float *x = img + (size_t)i * PIX;
        double *l = logits + (size_t)i * NCLS;
        pred[i] = variant == FLOAT ? infer_f(x, l) : infer_s(x, l, variant == GROUP);
        sum += pred[i];
    }
    return sum;
}

int main(int argc, char **argv)
{
    static const char *const names[] = {"float", "shift", "group"};
    uint32_t n, i;
    int variant = -1, passes, r, j, *pred;
    float *img;
    double *logits;
    long check = 0;
    for (j = 0; argc >= 3 && j < 3; j++)
        if (!strcmp(argv[1], names[j]))
            variant = j;
    if (variant < 0 || argc > 4) {
        fprintf(stderr, "usage: %s float|shift|group IMAGES [PASSES]\n", argv[0]);
        return 2;
    }
    passes = argc == 4 ? atoi(argv[3]) : 0;
    img = read_images(argv[2], &n);
    pred = alloc(n * sizeof *pred);
    logits = alloc((size_t)n * NCLS * sizeof *logits);
    prepare(variant);
    pass(variant, img, n, pred, logits);
    for (i = 0; i < n; i++) {
        printf("%d", pred[i]);
        for (j = 0; j < NCLS; j++)
            printf(" %.17g", logits[i * NCLS + j]);
        printf("\n");
    }
    if (passes > 0) {
        long long *wall = alloc((size_t)passes * sizeof *wall), *cpu = alloc((size_t)passes * sizeof *cpu);
        check += pass(variant, img, n, pred, logits); /* warm-up */
        for (r = 0; r < passes; r++) {
            long long w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
            check += pass(variant, img, n, pred, logits);
            cpu[r] = now_ns(CLOCK_PROCESS_CPUTIME_ID) - c0;
            wall[r] = now_ns(CLOCK_MONOTONIC) - w0;
        }
        printf("pass_ns");
        for (r = 0; r < passes; r++)
            printf(" %lld", wall[r]);
        printf("\npass_cpu_ns");
        for (r = 0; r < passes; r++)
            printf(" %lld", cpu[r]);
        printf("\ncheck %ld\n", check);
        free(wall);
        free(cpu);
    }
    free(img);
    free(pred);
    free(logits);
    return 0;
}
