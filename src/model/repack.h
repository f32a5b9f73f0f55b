/*
 * repack.h — internal to src/model: the load-time pass that replaces Q8_0
 * matmul weights by row-interleaved Q8_0_R16 copies (model/repack.c).
 */
#ifndef XDS_MODEL_REPACK_H
#define XDS_MODEL_REPACK_H

#include "model/model.h"

/* Repack every eligible weight of a loaded model (see repack.c); a no-op
 * unless the CPU level is AVX-512 and XDS_REPACK is not "0". The copies live
 * in one anonymous mapping recorded in m (freed by xds_model_repack_free).
 * Same as xds_model_repack_units(m, 1, every expert). */
xds_status xds_model_repack(xds_model *m);
void xds_model_repack_free(xds_model *m);

#endif
