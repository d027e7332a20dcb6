// Index maths of the tensor-core attention kernels: swizzled shared-memory tiles, the per-lane
// row addresses of ldmatrix for mma.sync m16n8k16 fragments, the accumulator layout, and the
// 16-byte chunk map of global <-> shared copies. Pure integer functions, compiled for the device
// and for the host: tests/test_attention_tc_layout.py runs them through a CPU model of ldmatrix
// and mma (from the PTX ISA's fragment tables) to check every loader in both memory layouts.
//
// A head's q, k, v or dO (or an output) is a logical matrix X[seq][dim]. In memory it is either
// tokens-major (dim contiguous: the channels-last [N, L, 3C] view) or channel-major (seq
// contiguous: the contiguous [N, 3C, L] tensor). A shared tile copies the global rows as they
// are, so its stored rows are seq positions (tokens) or dims (channel); ldmatrix's .trans flag
// turns either into the fragment the mma wants. Nothing is transposed in memory.
#pragma once

#include "common/hd.h"

namespace fastguide::attention::tc {

// Stored tile: kRows rows of kCols 16-bit elements (kCols % 8 == 0), rows of 16-byte chunks.
// The chunk index is XORed with bits of the row so that the 8 rows one ldmatrix phase reads
// (8 consecutive rows, one logical chunk) fall in 8 distinct 16-byte bank groups:
//   row pitch a multiple of 128 B: chunk ^ (row & 7)
//   pitch 64 B (mod 128):           chunk ^ ((row >> 1) & 3)   (rows r, r + 1 already differ)
//   pitch 32 B (mod 64):            chunk ^ ((row >> 2) & 1)
// The XOR only touches the low bits of the chunk, so it stays inside the row.
template <int kRows, int kCols>
struct Swizzled {
  static_assert(kCols % 16 == 0 && kRows % 8 == 0, "tile extents must be multiples of 16 and 8");
  static constexpr int rows = kRows, cols = kCols, chunks = kCols / 8;
  static constexpr int elems = kRows * kCols, bytes = elems * 2;
  FG_HD static constexpr int swz(int row) {
    return kCols % 64 == 0 ? (row & 7) : kCols % 32 == 0 ? ((row >> 1) & 3) : ((row >> 2) & 1);
  }
  static constexpr int mask = kCols % 64 == 0 ? 7 : kCols % 32 == 0 ? 3 : 1;  // swizzled chunk bits
  // Element offset of stored (row, col).
  FG_HD static constexpr int offset(int row, int col) {
    return row * kCols + ((((col >> 3) ^ swz(row))) << 3) + (col & 7);
  }
  // The same offset(R0 + r, 8 (c0 + cl)) for R0 % 8 == 0, c0 even and cl in {0, 1}, split so that
  // unrolled loops need few registers: the swizzle depends on r alone, and the bits of c0 above
  // the swizzle only add. With r and cl from the lane and R0, c0 compile-time constants, each lane
  // keeps one register per value of (c0 & mask) and every ldmatrix takes an immediate offset.
  FG_HD static constexpr int offset_split(int R0, int r, int c0, int cl) {
    return R0 * kCols + ((c0 & ~mask) << 3) + r * kCols + ((((c0 & mask) | cl) ^ swz(r)) << 3);
  }
};

// Logical tile X[kSeq][kDim] of one head part, stored as the global memory lays it out.
template <int kSeq, int kDim, bool kTokens>
struct SeqTile {
  static constexpr int seq = kSeq, dim = kDim;
  static constexpr bool tokens = kTokens;
  using Stored = Swizzled<kTokens ? kSeq : kDim, kTokens ? kDim : kSeq>;
  static constexpr int bytes = Stored::bytes;
  FG_HD static constexpr int offset(int s, int d) {
    return kTokens ? Stored::offset(s, d) : Stored::offset(d, s);
  }
  // The stored row that lane q (0..7) of an ldmatrix 8x8 block at logical (s, d) points at.
  FG_HD static constexpr int block_row(int s, int d, int q) {
    return kTokens ? Stored::offset(s + q, d) : Stored::offset(d + q, s);
  }

  // ldmatrix.x4 operands. Lane l addresses row l % 8 of matrix l / 8; register i of every lane
  // receives matrix i. A thread of a non-transposed load gets stored[l / 4][2 (l % 4) + j], of a
  // transposed load stored[2 (l % 4) + j][l / 4]. So a block whose fragment rows run along seq
  // ("X as A", "X^T as B") is a plain load when tokens-major and a .trans load when
  // channel-major, and the other way round for "X as B" (k running along seq). Each offset below
  // equals block_row() of its block (tests/test_attention_tc_layout.py checks it), written with
  // Stored::offset_split. Block origins are multiples of 16.

  // A(m, k) = X[m0 + m][k0 + k], 16 x 16: registers a0..a3 = blocks (m0, k0), (m0 + 8, k0),
  // (m0, k0 + 8), (m0 + 8, k0 + 8).
  static constexpr bool a_trans = !kTokens;
  FG_HD static constexpr int a_offset(int m0, int k0, int lane) {
    const int i = lane >> 3, q = lane & 7;
    return kTokens ? Stored::offset_split(m0, 8 * (i & 1) + q, k0 >> 3, i >> 1)
                   : Stored::offset_split(k0, 8 * (i >> 1) + q, m0 >> 3, i & 1);
  }
  // B(k, n) = X[n0 + n][k0 + k] (X^T as B) for two n-tiles: registers {b0, b1} of n-tile n0,
  // then of n-tile n0 + 8.
  static constexpr bool bt_trans = !kTokens;
  FG_HD static constexpr int bt_offset(int n0, int k0, int lane) {
    const int i = lane >> 3, q = lane & 7;
    return kTokens ? Stored::offset_split(n0, 8 * (i >> 1) + q, k0 >> 3, i & 1)
                   : Stored::offset_split(k0, 8 * (i & 1) + q, n0 >> 3, i >> 1);
  }
  // B(k, n) = X[k0 + k][n0 + n] (X as B, k along seq) for the n-tiles n0 and n0 + 8 along dim.
  static constexpr bool bn_trans = kTokens;
  FG_HD static constexpr int bn_offset(int k0, int n0, int lane) {
    const int i = lane >> 3, q = lane & 7;
    return kTokens ? Stored::offset_split(k0, 8 * (i & 1) + q, n0 >> 3, i >> 1)
                   : Stored::offset_split(n0, 8 * (i >> 1) + q, k0 >> 3, i & 1);
  }

};

// The copy of a tile between global and shared memory by kThreads threads, 16 bytes a chunk.
// Thread t starts at stored row t / cw, chunk t % cw (cw = the largest power of two dividing the
// chunks of a row), and moves by rs = kThreads / cw rows and by cw chunks, so its addresses only
// grow by constants and strides. In global memory stored (row, col) of a tile starting at seq0 is
// part + row * stride + col, with part at seq0 and stride the global stride of stored rows: the
// position stride (tokens-major) or the channel stride (channel-major).
template <class Tile, int kThreads>
struct CopyMap {
  using S = typename Tile::Stored;
  static constexpr int cw = S::chunks & -S::chunks;
  static constexpr int rs = kThreads / cw;
  static constexpr int steps = (S::rows + rs - 1) / rs;
  static constexpr int per_row = S::chunks / cw;
  static_assert(kThreads % cw == 0, "a row's chunks must spread over whole threads");
  FG_HD static constexpr int row(int tid, int step) { return tid / cw + step * rs; }
  FG_HD static constexpr int col(int tid, int k) { return 8 * (tid % cw + k * cw); }
  FG_HD static constexpr bool in_tile(int row) { return S::rows % rs == 0 || row < S::rows; }
};

// Accumulator (16 x 8 fp32 tile, 4 floats a lane): element e of lane l is at row g + 8 (e >> 1),
// column 2 t + (e & 1), with g = l / 4 and t = l % 4.
FG_HD constexpr int acc_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
FG_HD constexpr int acc_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

// An m16 x k16 A operand from accumulators: k-tile kk of a 16 x N accumulator row block is made
// of n-tiles 2 kk and 2 kk + 1. A register r packs (low, high) = elements 2 (r & 1), 2 (r & 1) + 1
// of n-tile 2 kk + (r >> 1): rows g / g + 8 alternate, then the second 8 columns.
FG_HD constexpr int a_from_acc_tile(int kk, int r) { return 2 * kk + (r >> 1); }
FG_HD constexpr int a_from_acc_elem(int r) { return 2 * (r & 1); }

}  // namespace fastguide::attention::tc
