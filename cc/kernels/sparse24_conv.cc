#include "cc/kernels/sparse24_conv.h"

#include <cstdint>
#include <string>

namespace escort {
namespace {

constexpr int64_t kGroup = 4;
constexpr int64_t kGroupsPerStep = kSparse24StepChannels / kGroup;  // 8
// Both metadata halves of a lane that holds metadata, every group keeping
// positions 0 and 1: the pattern of an all-zero group.
constexpr uint32_t kZeroGroupsMetadata = 0x44444444u;

}  // namespace

std::string BuildSparse24Layout(int64_t K, int64_t R, int64_t S, int64_t C,
                                const int32_t* row_offsets,
                                const int32_t* column_indices,
                                Sparse24Layout* layout) {
  if (C % kSparse24StepChannels != 0) {
    return "filter_shape: input channels (" + std::to_string(C) +
           ") must be a multiple of " + std::to_string(kSparse24StepChannels) +
           " for the 2:4 tensor-core kernel";
  }
  layout->num_steps = R * S * C / kSparse24StepChannels;
  layout->num_tiles = (K + kSparse24TileRows - 1) / kSparse24TileRows;
  layout->value_index.assign(layout->NumPackedValues(), -1);
  layout->metadata.assign(
      layout->num_steps * layout->num_tiles * kSparse24LanesPerFragment, 0);
  for (size_t i = 0; i < layout->metadata.size(); ++i) {
    if (i % 4 < 2) layout->metadata[i] = kZeroGroupsMetadata;
  }

  for (int64_t k = 0; k < K; ++k) {
    const int64_t tile = k / kSparse24TileRows;
    const int64_t row_in_tile = k % kSparse24TileRows;
    const int64_t g = row_in_tile % 8, upper_rows = row_in_tile / 8;
    for (int64_t i = row_offsets[k]; i < row_offsets[k + 1];) {
      // The kept entries of one group are consecutive: columns ascend.
      const int64_t group = column_indices[i] / kGroup;
      int64_t end = i + 1;
      while (end < row_offsets[k + 1] && column_indices[end] / kGroup == group) {
        ++end;
      }
      if (end - i > 2) {
        const int64_t tap = group * kGroup / C, c = group * kGroup % C;
        return "column_indices: output channel " + std::to_string(k) +
               " has " + std::to_string(end - i) +
               " nonzeros among input channels " + std::to_string(c) + ".." +
               std::to_string(c + kGroup - 1) + " of tap (" +
               std::to_string(tap / S) + ", " + std::to_string(tap % S) +
               "); 2:4 sparsity allows at most 2 in each aligned group of 4";
      }
      // Two kept slots at ascending positions; a lone nonzero at position p
      // pairs with an explicit zero at position 0 (or 1 when p is 0).
      int64_t positions[2], entries[2];
      if (end - i == 2) {
        positions[0] = column_indices[i] % kGroup;
        positions[1] = column_indices[i + 1] % kGroup;
        entries[0] = i;
        entries[1] = i + 1;
      } else if (column_indices[i] % kGroup == 0) {
        positions[0] = 0;
        positions[1] = 1;
        entries[0] = i;
        entries[1] = -1;
      } else {
        positions[0] = 0;
        positions[1] = column_indices[i] % kGroup;
        entries[0] = -1;
        entries[1] = i;
      }

      const int64_t step = group / kGroupsPerStep;
      const int64_t group_in_step = group % kGroupsPerStep;
      const int64_t fragment = step * layout->num_tiles + tile;
      // Values: lane (g, t = group % 4); register upper_rows + 2 * (group / 4).
      const int64_t lane = g * 4 + group_in_step % 4;
      const int64_t reg = upper_rows + 2 * (group_in_step / 4);
      const int64_t base =
          (fragment * kSparse24LanesPerFragment + lane) * kSparse24ValuesPerLane +
          reg * 2;
      for (int slot = 0; slot < 2; ++slot) {
        layout->value_index[base + slot] = static_cast<int32_t>(entries[slot]);
      }
      // Metadata: lane (g, t = group / 4); nibble group % 4 of the row half.
      const int64_t meta_lane = g * 4 + group_in_step / 4;
      const int shift = static_cast<int>(16 * upper_rows + 4 * (group_in_step % 4));
      uint32_t& word =
          layout->metadata[fragment * kSparse24LanesPerFragment + meta_lane];
      word &= ~(0xFu << shift);
      word |= static_cast<uint32_t>(positions[0] | positions[1] << 2) << shift;
      i = end;
    }
  }
  return "";
}

}  // namespace escort
