/* C entry point to the region ABI: include this, never mlb_shm.h directly.
 * mlb_shm.h stays preprocessor-free so cffi can read it as is. */
#ifndef MLB_ABI_H
#define MLB_ABI_H

#include <stdint.h>
#include <stddef.h>

#include "mlb_shm.h"

/* Natural alignment everywhere: every u64 on an 8-byte boundary, no holes
 * the compilers could disagree on.  cffi re-checks every sizeof/offsetof
 * against this compiler in API mode, and tests/test_layout.py compares. */
_Static_assert(sizeof(mlb_sample_t) == 8, "sample size");
_Static_assert(sizeof(float) == 4, "IEEE single float");
_Static_assert(sizeof(mlb_reservoir_t) == 16 + 8 * MLB_RESERVOIR_K, "reservoir size");
_Static_assert(sizeof(mlb_server_stats_t) % 8 == 0, "server stats alignment");
_Static_assert(sizeof(mlb_header_t) % 8 == 0, "header alignment");
_Static_assert(offsetof(mlb_region_t, out) % 8 == 0, "msg_out alignment");
_Static_assert(offsetof(mlb_region_t, in) % 8 == 0, "msg_in alignment");
_Static_assert(offsetof(mlb_msg_out_t, res) % 8 == 0, "reservoir alignment");
_Static_assert(MLB_MAX_SERVERS >= 256 && MLB_MAX_WORKERS >= 16, "capacity");

#endif
