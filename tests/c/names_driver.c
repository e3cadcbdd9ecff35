/* Test driver for the names of an exported header (tests/test_export_c.py): it looks every tensor
 * up by its enum constant, sizes its buffers by the header's macros, decodes each tensor (ans
 * streams through qpk_unpack) and writes the floats, in the list's order, for the Python side to
 * compare with QpkReader.dequantize. Linked with `<model>_weights.c` and the decoder.
 *
 *   names_driver OUT
 *
 * Built with -DNAMES_HEADER='"<model>_weights.h"', -DNAMES_LIST='"list.inc"' (lines
 * `NAME(<constant>, <index the container gives the tensor>)`), and -DNAMES_TENSOR_COUNT,
 * -DNAMES_MAX_COUNT, -DNAMES_UNPACK_BYTES set to the header's macros of those names. <limits.h>
 * comes first, so that a constant equal to one of its macros would be replaced by it.
 */
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include NAMES_HEADER

struct lookup {
    size_t index;    /* the constant's value */
    size_t expect;   /* the tensor's place in the container */
    const char *constant;
};

static const struct lookup lookups[] = {
#define NAME(constant, index) {constant, index, #constant},
#include NAMES_LIST
#undef NAME
};

static float w[NAMES_MAX_COUNT + 1];                 /* + 1: no zero-length array */
static uint32_t work[NAMES_UNPACK_BYTES / 4 + 1];    /* as the header's comment says */

int main(int argc, char **argv)
{
    size_t k, n = sizeof lookups / sizeof lookups[0];
    FILE *out;
    if (argc != 2 || !(out = fopen(argv[1], "wb"))) return 2;
    if ((size_t)NAMES_TENSOR_COUNT != qpk_tensor_count || n != qpk_tensor_count) {
        fprintf(stderr, "%lu constants, %lu tensors\n", (unsigned long)n, (unsigned long)qpk_tensor_count);
        return 3;
    }
    for (k = 0; k < n; k++) {
        const qpk_tensor *t;
        qpk_tensor raw;
        int rc;
        if (lookups[k].index != lookups[k].expect || lookups[k].index >= qpk_tensor_count) {
            fprintf(stderr, "%s is %lu, not %lu\n", lookups[k].constant, (unsigned long)lookups[k].index,
                    (unsigned long)lookups[k].expect);
            return 4;
        }
        t = &qpk_tensors[lookups[k].index];
        if (t->count > NAMES_MAX_COUNT || qpk_unpack_size(t) > NAMES_UNPACK_BYTES) {
            fprintf(stderr, "%s: larger than the header says\n", lookups[k].constant);
            return 5;
        }
        /* by name too, where a C string can say it */
        if (strlen(t->name) == t->name_len && qpk_find_tensor(qpk_tensors, qpk_tensor_count, t->name) != t) return 6;
        rc = qpk_unpack(t, work, sizeof work, &raw);
        if (rc == 0) rc = qpk_decode_tensor(&raw, w);
        if (rc) {
            fprintf(stderr, "%s: %s\n", lookups[k].constant, qpk_strerror(rc));
            return 1;
        }
        fwrite(w, sizeof(float), (size_t)t->count, out);
    }
    return fclose(out) ? 2 : 0;
}
