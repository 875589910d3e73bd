// PNG output and the contact sheet behind --preview (a few frames of every shot, one row
// per shot).
//
// The PNG encoder is self-contained (CRC-32 and Adler-32 implemented here). Built with zlib
// (MOGAGEN_HAVE_ZLIB) the image data is deflate-compressed with per-row adaptive filters;
// without it, or with compress = false, it is stored in uncompressed deflate blocks, which
// every PNG reader accepts.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace mg {

// An 8-bit RGB image: width*height*3 bytes, row-major, no padding.
struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;
};

// The complete PNG file (8-bit RGB, no interlace) for rgb (width*height*3 bytes).
std::vector<uint8_t> encode_png(const std::vector<uint8_t>& rgb, int width, int height,
                                bool compress = true);

// Writes encode_png(...) to path, through "<path>.partial" renamed into place.
// Throws mg::Error(Io) with the path when the folder is missing or the write fails.
void write_png(const std::string& path, const std::vector<uint8_t>& rgb, int width, int height);

// Up to k indices in [0, n), evenly spaced, first and last included, increasing:
// index_j = round(j * (n - 1) / (k - 1)). All of 0..n-1 when n <= k; {0} when k == 1.
// Use it to keep only the frames a contact sheet needs while frames stream past.
std::vector<int64_t> pick_evenly_spaced(int64_t n, int k);

// Box-filter (area-average) resize of an RGB8 image; meant for shrinking (growing
// degenerates to nearest neighbour).
std::vector<uint8_t> resize_box(const uint8_t* rgb, int width, int height, int out_width,
                                int out_height);

struct ContactSheetOptions {
  int frames_per_shot = 4;  // at most this many tiles per row
  int max_width = 1280;     // the sheet's width limit in pixels (tiles are never enlarged)
  int gap = 4;              // pixels between tiles and around the border
  uint8_t background = 32;  // dark grey, also for empty cells
};

// shots[s]: frames of shot s, each an RGB8 image of width x height. From each shot up to
// opts.frames_per_shot frames are taken with pick_evenly_spaced (so passing every frame of
// a shot, or only the already-picked ones, gives the same sheet). Layout: one row per shot,
// left-aligned; the number of columns is the largest number of tiles in any row; every tile
// is the frame shrunk with resize_box to the same size, aspect ratio kept, so that the
// sheet is at most opts.max_width wide. A shot without frames gives an empty row.
// Throws mg::Error(Internal) when shots is empty or a frame has the wrong size.
RgbImage contact_sheet(const std::vector<std::vector<std::vector<uint8_t>>>& shots, int width,
                       int height, const ContactSheetOptions& opts = {});

// Writes a contact sheet of `rows` rows to a PNG: frames[r*per_row .. r*per_row+per_row-1]
// make row r (frames past rows*per_row are ignored). Equivalent to contact_sheet() with
// those rows and frames_per_shot = per_row.
void write_contact_sheet(const std::string& path, const std::vector<std::vector<uint8_t>>& frames,
                         int width, int height, int rows, int per_row = 4, int max_width = 1280);

}  // namespace mg
