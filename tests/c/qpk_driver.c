/* Test driver for qpk.h (tests/test_export_c.py). Not part of qpack: it allocates, does I/O, and
 * compares qpk.h's results against itself (whole tensor against streamed ranges) before writing
 * the floats for the Python side to compare with QpkReader.dequantize.
 *
 *   qpk_driver table OUT          decode every tensor of the compiled-in table
 *                                 (-DQPK_DRIVER_TABLE, linked with an exported <model>_weights.c)
 *   qpk_driver file IN OUT        qpk_open IN, decode every tensor; "index rc" per tensor on stdout
 *   qpk_driver check IN...        per file "rc sha256" (rc: first error of open / get / decode;
 *                                 sha256 of all decoded floats)
 *   qpk_driver diff IN...         per file a line: open's rc, then per tensor "rc:sha256" of its
 *                                 floats ("rc:-" when get, find or decode failed)
 *   qpk_driver time N IN...       per file "count open_us all_us": the tensors, then the least CPU
 *                                 time of N runs of qpk_open, and of qpk_open with qpk_get_tensor
 *                                 of every tensor
 *   qpk_driver fuzz IN            truncations, bit flips and checksum-fixed metadata mutations of IN;
 *                                 prints "truncated A/N flipped B/M meta C/K" (A, B: accepted)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef QPK_DRIVER_TABLE
/* linked with an exported <model>_weights.c, which compiles the decoder unless built with
 * -DQPK_NO_IMPLEMENTATION (then this file does, given -DQPK_IMPLEMENTATION) */
#include "qpk.h"
extern const qpk_tensor qpk_tensors[];
extern const size_t qpk_tensor_count;
#else
#define QPK_IMPLEMENTATION
#include "qpk.h"
#endif

/* Unpack ans-coded codes (qpk_unpack, into an exact-size workspace; one byte less must be refused),
 * then decode t whole into a fresh exact-size buffer, and again in ranges of varying sizes: the two
 * must agree bit for bit. Returns the first error code; *out gets the whole decode. */
static int decode_raw(const qpk_tensor *t, float **out);

static int decode(const qpk_tensor *coded, float **out)
{
    qpk_tensor t;
    size_t need = qpk_unpack_size(coded);
    unsigned char *work = malloc(need ? need : 1);
    int rc;
    if (!work) exit(2);
    *out = NULL;
    if (need && qpk_unpack(coded, work, need - 1, &t) != QPK_E_SPACE) exit(3);
    if (coded->codec == QPK_ANS && qpk_decode_range(coded, 0, 0, NULL) != QPK_E_CODEC) exit(3); /* not without unpacking */
    rc = qpk_unpack(coded, work, need, &t);
    if (rc == 0 && need) { /* again in place (raw == t): the same codes */
        qpk_tensor same = *coded;
        unsigned char *again = malloc(need);
        if (!again) exit(2);
        if (qpk_unpack(&same, again, need, &same) != 0 || same.codes_len != t.codes_len ||
            memcmp(same.codes, t.codes, t.codes_len) != 0)
            exit(3);
        free(again);
    }
    if (rc == 0) rc = decode_raw(&t, out);
    free(work);
    return rc;
}

static int decode_raw(const qpk_tensor *t, float **out)
{
    static const size_t steps[] = {1, 7, 64, 3, 1000, 13};
    size_t n = (size_t)t->count, first = 0, k = 0;
    float *whole = malloc(n ? n * sizeof(float) : 1), *part;
    int rc;
    *out = whole;
    if (!whole) exit(2);
    rc = qpk_decode_tensor(t, whole);
    if (rc) return rc;
    while (first < n) {
        size_t m = steps[k++ % 6];
        if (m > n - first) m = n - first;
        part = malloc(m * sizeof(float));
        if (!part) exit(2);
        rc = qpk_decode_range(t, first, m, part);
        if (rc || memcmp(part, whole + first, m * sizeof(float)) != 0) {
            fprintf(stderr, "range [%lu, +%lu) differs from the whole decode (rc %d)\n", (unsigned long)first, (unsigned long)m, rc);
            exit(3);
        }
        free(part);
        first += m;
    }
    if (qpk_decode_range(t, t->count, 0, whole) != 0 || qpk_decode_range(t, t->count, 1, whole) != QPK_E_RANGE) exit(3);
    return 0;
}

#ifdef QPK_DRIVER_TABLE
int main(int argc, char **argv)
{
    FILE *out;
    size_t i, need = 0;
    if (argc != 3 || strcmp(argv[1], "table") != 0 || !(out = fopen(argv[2], "wb"))) return 2;
    for (i = 0; i < qpk_tensor_count; i++) {
        float *v;
        int rc = decode(&qpk_tensors[i], &v);
        if (qpk_unpack_size(&qpk_tensors[i]) > need) need = qpk_unpack_size(&qpk_tensors[i]);
        if (rc) {
            fprintf(stderr, "tensor %lu: %s\n", (unsigned long)i, qpk_strerror(rc));
            return 1;
        }
        /* by name, unless the name holds a NUL (a C string cannot say it) */
        if (strlen(qpk_tensors[i].name) == qpk_tensors[i].name_len &&
            qpk_find_tensor(qpk_tensors, qpk_tensor_count, qpk_tensors[i].name) == NULL)
            return 4;
        fwrite(v, sizeof(float), (size_t)qpk_tensors[i].count, out);
        free(v);
    }
    printf("unpack %lu\n", (unsigned long)need); /* the largest workspace: the header's <MODEL>_UNPACK_BYTES */
    return fclose(out) ? 2 : 0;
}
#else

static unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long n;
    if (!f || fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) exit(2);
    /* exactly n bytes (at least 1 for malloc), so the sanitizer sees any read past the end */
    buf = malloc(n ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) exit(2);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* qpk_open into a fresh workspace of exactly qpk_open_size bytes (*work, freed by the caller);
 * one byte less must not open the file */
static int open_file(const unsigned char *buf, size_t len, qpk_file *f, uint32_t **work)
{
    size_t need = qpk_open_size(buf, len);
    *work = malloc(need ? need : 1);
    if (!*work) exit(2);
    if (need && qpk_open(buf, len, *work, need - 1, f) == 0) exit(3);
    return qpk_open(buf, len, need ? *work : NULL, need, f);
}

/* describe, find and decode tensor i of an opened file: its rc, and its floats in *v */
static int load_one(const qpk_file *f, uint32_t i, qpk_tensor *t, uint32_t shape[QPK_MAX_RANK], float **v)
{
    uint32_t found;
    int rc = qpk_get_tensor(f, i, t, shape);
    *v = NULL;
    if (rc == 0) rc = qpk_find(f, t->name, t->name_len, &found);
    if (rc == 0 && found > i) rc = -100; /* the first tensor of that name comes first */
    if (rc == 0) rc = decode(t, v);
    return rc;
}

/* open, then describe and decode every tensor; rc is the first error; sha over the floats */
static int load_all(const unsigned char *buf, size_t len, FILE *out, uint8_t sha[32])
{
    qpk_file f;
    qpk_tensor t;
    uint32_t shape[QPK_MAX_RANK], i, *work;
    unsigned char *all = NULL;
    size_t used = 0;
    int rc = open_file(buf, len, &f, &work);
    memset(sha, 0, 32);
    if (rc) {
        free(work);
        return rc;
    }
    for (i = 0; i < f.tensor_count; i++) {
        float *v;
        rc = load_one(&f, i, &t, shape, &v);
        if (out) {
            printf("%lu %d\n", (unsigned long)i, rc);
            if (rc == 0) fwrite(v, sizeof(float), (size_t)t.count, out);
        } else if (rc == 0) {
            all = realloc(all, used + (size_t)t.count * sizeof(float) + 1);
            if (!all) exit(2);
            memcpy(all + used, v, (size_t)t.count * sizeof(float));
            used += (size_t)t.count * sizeof(float);
        }
        free(v);
        if (rc && !out) break;
    }
    if (qpk_get_tensor(&f, f.tensor_count, &t, shape) != QPK_E_RANGE) exit(3);
    if (!out && rc == 0) qpk_sha256(all ? all : (unsigned char *)"", used, sha);
    free(all);
    free(work);
    return rc;
}

static void print_sha(const uint8_t sha[32])
{
    int k;
    for (k = 0; k < 32; k++) printf("%02x", sha[k]);
}

/* a line: open's rc, then each tensor's rc and the sha256 of its floats, each on its own */
static void diff_file(const unsigned char *buf, size_t len)
{
    qpk_file f;
    qpk_tensor t;
    uint32_t shape[QPK_MAX_RANK], i, *work;
    uint8_t sha[32];
    int rc = open_file(buf, len, &f, &work);
    printf("%d", rc);
    for (i = 0; rc == 0 && i < f.tensor_count; i++) {
        float *v;
        int trc = load_one(&f, i, &t, shape, &v);
        printf(" %d:", trc);
        if (trc == 0) {
            qpk_sha256(v, (size_t)t.count * sizeof(float), sha);
            print_sha(sha);
        } else {
            printf("-");
        }
        free(v);
    }
    printf("\n");
    fflush(stdout);
    free(work);
}

/* the least CPU time of `runs` runs of qpk_open (and of qpk_open with every qpk_get_tensor), in us */
static void time_file(const unsigned char *buf, size_t len, int runs)
{
    qpk_file f;
    qpk_tensor t;
    uint32_t shape[QPK_MAX_RANK], i, *work;
    double best_open = 1e30, best_all = 1e30;
    size_t need = qpk_open_size(buf, len);
    int r, all;
    if (open_file(buf, len, &f, &work) != 0) exit(4);
    for (r = 0; r < runs; r++)
        for (all = 0; all < 2; all++) {
            clock_t c0 = clock();
            double us;
            if (qpk_open(buf, len, work, need, &f) != 0) exit(4);
            for (i = 0; all && i < f.tensor_count; i++)
                if (qpk_get_tensor(&f, i, &t, shape) != 0) exit(4);
            us = (double)(clock() - c0) * 1e6 / CLOCKS_PER_SEC;
            if (all && us < best_all) best_all = us;
            if (!all && us < best_open) best_open = us;
        }
    printf("%lu %.0f %.0f\n", (unsigned long)f.tensor_count, best_open, best_all);
    free(work);
}

static void fix_checksums(unsigned char *buf)
{
    uint32_t crc;
    size_t meta_len = 0;
    int i;
    for (i = 7; i >= 0; i--) meta_len = meta_len << 8 | buf[16 + i];
    qpk_sha256(buf + 80, meta_len, buf + 40);
    crc = qpk_crc32(buf, 72);
    for (i = 0; i < 4; i++) buf[72 + i] = (unsigned char)(crc >> (8 * i));
}

/* one mutated copy in a fresh exact-size allocation; 1 when accepted and fully decoded */
static int try_copy(const unsigned char *src, size_t len, size_t pos, unsigned char value, int fix)
{
    unsigned char *copy = malloc(len ? len : 1), sha[32];
    int rc;
    if (!copy) exit(2);
    memcpy(copy, src, len);
    if (pos < len) copy[pos] = value;
    if (fix) fix_checksums(copy);
    rc = load_all(copy, len, NULL, sha);
    free(copy);
    return rc == 0;
}

static int fuzz(const unsigned char *buf, size_t len)
{
    static const unsigned char values[] = {0x00, 0xFF, 0xC0, 0xC1, 0xC3, 0xCF, 0xD3, 0xDB, 0xDD, 0xDF, 0x7F, 0x80, 0x90, 0xA0};
    size_t meta_len = 0, pos, cuts = 0, flips = 0, metas = 0, cut_ok = 0, flip_ok = 0, meta_ok = 0, v;
    unsigned bit;
    int i;
    for (i = 7; i >= 0; i--) meta_len = meta_len << 8 | buf[16 + i];
    /* every length up to the end of the metadata, then a stride through the payload */
    for (pos = 0; pos < len; pos += pos < 80 + meta_len + 64 ? 1 : 61, cuts++) cut_ok += try_copy(buf, pos, len, 0, 0);
    /* every bit of the header and the metadata, a stride of bytes through the rest */
    for (pos = 0; pos < len; pos += pos < 80 + meta_len ? 1 : 29)
        for (bit = 0; bit < 8; bit += pos < 80 + meta_len ? 1 : 3, flips++)
            flip_ok += try_copy(buf, len, pos, (unsigned char)(buf[pos] ^ (1u << bit)), 0);
    /* metadata bytes changed with both checksums fixed: only the parser and the rules stand guard */
    for (pos = 80; pos < 80 + meta_len; pos++)
        for (v = 0; v < sizeof values + 2; v++, metas++) {
            unsigned char x = v < sizeof values ? values[v] : (unsigned char)(buf[pos] + (v == sizeof values ? 1 : -1));
            meta_ok += try_copy(buf, len, pos, x, 1);
        }
    printf("truncated %lu/%lu flipped %lu/%lu meta %lu/%lu\n", (unsigned long)cut_ok, (unsigned long)cuts,
           (unsigned long)flip_ok, (unsigned long)flips, (unsigned long)meta_ok, (unsigned long)metas);
    return 0;
}

int main(int argc, char **argv)
{
    unsigned char *buf, sha[32];
    size_t len;
    int i, rc;
    FILE *out;
    if (argc == 4 && strcmp(argv[1], "file") == 0) {
        buf = read_file(argv[2], &len);
        if (!(out = fopen(argv[3], "wb"))) return 2;
        rc = load_all(buf, len, out, sha);
        {
            qpk_file f;
            uint32_t *work;
            printf("open %d\n", open_file(buf, len, &f, &work));
            free(work);
        }
        free(buf);
        return fclose(out) ? 2 : 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        for (i = 2; i < argc; i++) {
            buf = read_file(argv[i], &len);
            rc = load_all(buf, len, NULL, sha);
            printf("%d ", rc);
            print_sha(sha);
            printf("\n");
            free(buf);
        }
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "diff") == 0) {
        for (i = 2; i < argc; i++) {
            buf = read_file(argv[i], &len);
            diff_file(buf, len);
            free(buf);
        }
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "time") == 0) {
        for (i = 3; i < argc; i++) {
            buf = read_file(argv[i], &len);
            time_file(buf, len, atoi(argv[2]));
            free(buf);
        }
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "fuzz") == 0) {
        buf = read_file(argv[2], &len);
        rc = fuzz(buf, len);
        free(buf);
        return rc;
    }
    return 2;
}
#endif
