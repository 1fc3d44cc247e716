/* C entry point to the marllb data-plane core (no VPP includes).
 * dp_core_api.h stays preprocessor-free so cffi can read it as is. */
#ifndef MLB_DP_CORE_H
#define MLB_DP_CORE_H

#include "../../csrc/mlb_core.h"
#include "dp_core_api.h"

#endif
