// PNG output (self-contained encoder: stored deflate blocks, CRC32, Adler-32) and the
// contact sheet behind --preview: a few frames of every shot, one row per shot.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mg {

// rgb: width*height*3 bytes, row-major.
void write_png(const std::string& path, const std::vector<uint8_t>& rgb, int width, int height);

// frames: RGB8 images of width x height, `per_row` consecutive frames per row (missing
// cells stay dark grey), tiles scaled down (box filter) so the sheet is at most max_width
// wide; 4-pixel gaps.
void write_contact_sheet(const std::string& path, const std::vector<std::vector<uint8_t>>& frames,
                         int width, int height, int rows, int per_row = 4, int max_width = 1280);

}  // namespace mg
