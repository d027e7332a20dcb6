// Tensor-core attention backward (dQ, dK, dV), padded head dim 32 (fp16, bf16; both layouts).
#include "attention/tc_launch.cuh"
FG_ATTN_TC_BWD(32)
