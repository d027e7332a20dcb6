// Tensor-core attention forward, padded head dim 160 (fp16, bf16; both layouts; 64- and 128-query blocks).
#include "attention/tc_launch.cuh"
FG_ATTN_TC_FWD(160)
