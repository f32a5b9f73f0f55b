/*
 * repack.h — internal to src/model: the load-time pass that replaces Q8_0
 * matmul weights by row-interleaved Q8_0_R16 copies (model/repack.c).
 */
#ifndef XDS_MODEL_REPACK_H
#define XDS_MODEL_REPACK_H

#include "model/model.h"

/* xds_model_repack and xds_model_repack_units are declared in model.h. The
 * copies live in one anonymous mapping recorded in m (freed here). */
void xds_model_repack_free(xds_model *m);

#endif
