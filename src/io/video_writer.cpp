#include "io/video_writer.h"

#include <cmath>
#include <filesystem>
#include <system_error>

#include "mogagen/error.h"
#include "mogagen/log.h"

#ifdef MOGAGEN_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/mem.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace fs = std::filesystem;

namespace mg {

std::vector<uint8_t> frames_to_rgb8(const Tensor& frames) {
  if (frames.ndim() != 4 || frames.dim(0) != 3)
    throw internal_error("frames_to_rgb8: expected F32 [3, n, H, W], got " + frames.str());
  const float* f = frames.f32();  // checks F32 and CPU
  const int64_t n = frames.dim(1), P = frames.dim(2) * frames.dim(3);
  std::vector<uint8_t> out(size_t(n * P * 3));
  for (int64_t t = 0; t < n; ++t)
    for (int c = 0; c < 3; ++c) {
      const float* src = f + (c * n + t) * P;  // plane c of frame t: contiguous
      uint8_t* dst = out.data() + t * P * 3 + c;
      for (int64_t p = 0; p < P; ++p) {
        float v = (src[p] + 1.0f) * 127.5f + 0.5f;
        v = v > 0.0f ? v : 0.0f;  // also maps NaN to 0
        v = v < 255.0f ? v : 255.0f;
        dst[p * 3] = uint8_t(v);  // v >= 0: truncation is floor
      }
    }
  return out;
}

#ifdef MOGAGEN_HAVE_FFMPEG

namespace {

std::string averr(int e) {
  char b[AV_ERROR_MAX_STRING_SIZE] = {0};
  av_strerror(e, b, sizeof b);
  return b;
}

// Keys the MP4 muxer writes as iTunes-style ("ilst") atoms, which players show.
bool standard_mp4_tag(const std::string& k) {
  static const char* const keys[] = {
      "title",   "artist",  "author",      "album_artist", "album", "composer", "encoder",
      "comment", "genre",   "copyright",   "grouping",     "lyrics", "description",
      "synopsis", "show",   "episode_id",  "network",      "keywords", "date", "track", "disc"};
  for (const char* s : keys)
    if (k == s) return true;
  return false;
}

// The exact frame rate: NTSC rates (23.976, 29.97, 59.94, ...) become k*1000/1001.
AVRational frame_rate(double fps) {
  const double k = std::round(fps * 1.001);
  if (k >= 1 && std::fabs(fps - k * 1000.0 / 1001.0) < 6e-4 &&  // 3-decimal spellings
      std::fabs(fps - std::round(fps)) > 1e-3)
    return AVRational{int(k) * 1000, 1001};
  return av_d2q(fps, 1 << 20);
}

}  // namespace

struct VideoWriter::Impl {
  AVFormatContext* oc = nullptr;
  AVCodecContext* ctx = nullptr;
  AVStream* st = nullptr;
  SwsContext* sws = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* pkt = nullptr;
  int w = 0, h = 0;

  ~Impl() {
    sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&pkt);
    avcodec_free_context(&ctx);
    if (oc) {
      if (oc->pb) avio_closep(&oc->pb);
      avformat_free_context(oc);  // also frees the chapters and the muxer state
    }
  }

  // Moves every packet the encoder has ready into the file.
  void drain(const std::string& path) {
    for (;;) {
      int r = avcodec_receive_packet(ctx, pkt);
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) throw io_error(path + ": H.264 encoding failed: " + averr(r));
      if (pkt->duration <= 0) pkt->duration = 1;  // one frame period (ctx time base)
      av_packet_rescale_ts(pkt, ctx->time_base, st->time_base);
      pkt->stream_index = st->index;
      r = av_interleaved_write_frame(oc, pkt);  // takes the packet's reference
      if (r < 0) throw io_error(path + ": writing failed: " + averr(r) + " (disk full?)");
    }
  }
};

bool VideoWriter::available() { return avcodec_find_encoder_by_name("libx264") != nullptr; }

VideoWriter::VideoWriter(const std::string& final_path, int width, int height, double fps,
                         const VideoMeta& meta, int crf, const std::string& preset)
    : final_(final_path) {
  const std::string& P = final_path;
  if (P.empty()) throw usage_error("video output path is empty");
  if (width <= 0 || height <= 0 || width % 2 || height % 2)
    throw usage_error(P + ": H.264 with 4:2:0 chroma needs an even width and height, got " +
                      std::to_string(width) + "x" + std::to_string(height));
  if (!std::isfinite(fps) || fps <= 0 || fps > 1000)
    throw usage_error(P + ": the frame rate must be in (0, 1000], got " + std::to_string(fps));
  if (crf < 0 || crf > 51)
    throw usage_error(P + ": CRF must be in 0..51, got " + std::to_string(crf));
  if (preset.empty()) throw usage_error(P + ": the x264 preset name is empty");
  for (const Chapter& c : meta.chapters)
    if (c.start_frame < 0 || c.end_frame <= c.start_frame)
      throw usage_error(P + ": chapter '" + c.title + "' has an empty or negative frame range [" +
                        std::to_string(c.start_frame) + ", " + std::to_string(c.end_frame) + ")");

  const fs::path fp(P);
  fs::path dir = fp.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw io_error(P + ": cannot write the video: '" + dir.string() +
                   (fs::exists(dir, ec) ? "' is not a folder" : "' does not exist"));
  if (fs::is_directory(fp, ec)) throw usage_error(P + ": is a folder, expected a video file name");
  tmp_ = (dir / ("." + fp.filename().string() + ".partial.mp4")).string();

  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec)
    throw usage_error(P + ": libx264 not available in this FFmpeg build (install an FFmpeg with "
                          "x264 support, e.g. Debian's libavcodec-extra or libavcodec59)");

  av_log_set_level(spdlog::get_level() <= spdlog::level::debug ? AV_LOG_INFO : AV_LOG_ERROR);
  impl_ = std::make_unique<Impl>();
  Impl& m = *impl_;
  m.w = width;
  m.h = height;
  bool opened = false;
  try {
    int r = avformat_alloc_output_context2(&m.oc, nullptr, "mp4", tmp_.c_str());
    if (r < 0 || !m.oc) throw internal_error("cannot create an MP4 muxer: " + averr(r));
    m.st = avformat_new_stream(m.oc, nullptr);
    m.ctx = avcodec_alloc_context3(codec);
    m.frame = av_frame_alloc();
    m.pkt = av_packet_alloc();
    if (!m.st || !m.ctx || !m.frame || !m.pkt) throw internal_error("out of memory opening " + P);

    const AVRational rate = frame_rate(fps);
    m.ctx->width = width;
    m.ctx->height = height;
    m.ctx->pix_fmt = AV_PIX_FMT_YUV420P;
    m.ctx->time_base = av_inv_q(rate);
    m.ctx->framerate = rate;
    m.ctx->sample_aspect_ratio = AVRational{1, 1};
    m.ctx->color_primaries = AVCOL_PRI_BT709;
    m.ctx->color_trc = AVCOL_TRC_BT709;
    m.ctx->colorspace = AVCOL_SPC_BT709;
    m.ctx->color_range = AVCOL_RANGE_MPEG;
    if (m.oc->oformat->flags & AVFMT_GLOBALHEADER) m.ctx->flags |= AV_CODEC_FLAG_GLOBAL_HEADER;
    AVDictionary* eopts = nullptr;
    av_dict_set(&eopts, "crf", std::to_string(crf).c_str(), 0);
    av_dict_set(&eopts, "preset", preset.c_str(), 0);
    r = avcodec_open2(m.ctx, codec, &eopts);
    av_dict_free(&eopts);
    if (r < 0)
      throw usage_error(P + ": cannot open the libx264 encoder (preset '" + preset + "', crf " +
                        std::to_string(crf) + "): " + averr(r));
    r = avcodec_parameters_from_context(m.st->codecpar, m.ctx);
    if (r < 0) throw internal_error("avcodec_parameters_from_context: " + averr(r));
    m.st->time_base = m.ctx->time_base;
    m.st->avg_frame_rate = rate;
    m.st->r_frame_rate = rate;
    m.st->sample_aspect_ratio = m.ctx->sample_aspect_ratio;

    for (const auto& [k, v] : meta.tags)
      if (!k.empty()) av_dict_set(&m.oc->metadata, k.c_str(), v.c_str(), 0);
    // Chapters must exist before the header (the MP4 muxer reserves a chapter track); their
    // atoms are written with the trailer. avformat_free_context() frees them.
    for (size_t i = 0; i < meta.chapters.size(); ++i) {
      const Chapter& c = meta.chapters[i];
      auto* ch = static_cast<AVChapter*>(av_mallocz(sizeof(AVChapter)));
      if (!ch) throw internal_error("out of memory");
      ch->id = int64_t(i + 1);
      ch->time_base = m.ctx->time_base;  // one tick per frame
      ch->start = c.start_frame;
      ch->end = c.end_frame;
      av_dict_set(&ch->metadata, "title", c.title.c_str(), 0);
      int nb = int(m.oc->nb_chapters);
      if (av_dynarray_add_nofree(&m.oc->chapters, &nb, ch) < 0) {
        av_dict_free(&ch->metadata);
        av_free(ch);
        throw internal_error("out of memory");
      }
      m.oc->nb_chapters = unsigned(nb);
    }

    r = avio_open(&m.oc->pb, tmp_.c_str(), AVIO_FLAG_WRITE);
    if (r < 0)
      throw io_error(P + ": cannot write in folder '" + dir.string() + "': " + averr(r));
    opened = true;
    AVDictionary* mopts = nullptr;
    // Any other key (e.g. "mogagen_seed") would be dropped from "ilst"; then all tags go
    // to "mdta" keys instead, which keep every key/value (FFmpeg, exiftool and most players
    // read them).
    bool custom = false;
    for (const auto& kv : meta.tags) custom = custom || !standard_mp4_tag(kv.first);
    av_dict_set(&mopts, "movflags", custom ? "+faststart+use_metadata_tags" : "+faststart", 0);
    r = avformat_write_header(m.oc, &mopts);
    av_dict_free(&mopts);
    if (r < 0) throw io_error(P + ": cannot write the MP4 header: " + averr(r));

    m.frame->format = AV_PIX_FMT_YUV420P;
    m.frame->width = width;
    m.frame->height = height;
    m.frame->sample_aspect_ratio = m.ctx->sample_aspect_ratio;
    m.frame->color_primaries = AVCOL_PRI_BT709;
    m.frame->color_trc = AVCOL_TRC_BT709;
    m.frame->colorspace = AVCOL_SPC_BT709;
    m.frame->color_range = AVCOL_RANGE_MPEG;
    if (av_frame_get_buffer(m.frame, 0) < 0) throw internal_error("out of memory for a frame");
    // RGB (full range) -> BT.709 limited-range YUV 4:2:0. Luma is not resampled; chroma is
    // computed at full resolution, then box-averaged over 2x2 (SWS_AREA): sharper colour
    // edges after decoding than the bicubic or bilinear filters (measured: +2.5 dB PSNR in
    // the blue channel of the test clip).
    m.sws = sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P,
                           SWS_AREA | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INP, nullptr,
                           nullptr, nullptr);
    if (!m.sws) throw internal_error("cannot create the RGB -> YUV converter");
    const int* cs = sws_getCoefficients(SWS_CS_ITU709);
    sws_setColorspaceDetails(m.sws, cs, 1, cs, 0, 0, 1 << 16, 1 << 16);
  } catch (...) {
    impl_.reset();
    if (opened) fs::remove(tmp_, ec);
    throw;
  }
}

VideoWriter::~VideoWriter() {
  if (finished_) return;
  impl_.reset();  // closes the file
  std::error_code ec;
  if (!tmp_.empty()) fs::remove(tmp_, ec);
}

void VideoWriter::write_frames(const Tensor& frames) {
  if (finished_ || !impl_) throw internal_error("VideoWriter::write_frames after finish()");
  const Impl& m = *impl_;
  if (frames.ndim() != 4 || frames.dim(0) != 3 || frames.dim(2) != m.h || frames.dim(3) != m.w)
    throw internal_error("VideoWriter::write_frames: expected [3, n, " + std::to_string(m.h) +
                         ", " + std::to_string(m.w) + "], got " + frames.str());
  const auto rgb = frames_to_rgb8(frames);
  write_rgb8(rgb.data(), frames.dim(1));
}

void VideoWriter::write_rgb8(const uint8_t* rgb, int64_t n) {
  if (finished_ || !impl_) throw internal_error("VideoWriter::write_rgb8 after finish()");
  Impl& m = *impl_;
  const size_t per = size_t(m.w) * size_t(m.h) * 3;
  for (int64_t i = 0; i < n; ++i) {
    if (av_frame_make_writable(m.frame) < 0) throw internal_error("frame not writable");
    // swscale reads four plane pointers and strides.
    const uint8_t* src[4] = {rgb + size_t(i) * per, nullptr, nullptr, nullptr};
    const int stride[4] = {m.w * 3, 0, 0, 0};
    sws_scale(m.sws, src, stride, 0, m.h, m.frame->data, m.frame->linesize);
    m.frame->pts = frames_;
    const int r = avcodec_send_frame(m.ctx, m.frame);
    if (r < 0) throw io_error(final_ + ": H.264 encoding failed: " + averr(r));
    m.drain(final_);
    ++frames_;
  }
}

void VideoWriter::finish() {
  if (finished_) return;
  if (!impl_) throw internal_error("VideoWriter::finish after a failed finish");
  if (frames_ == 0) throw internal_error(final_ + ": VideoWriter::finish without any frame");
  Impl& m = *impl_;
  int r = avcodec_send_frame(m.ctx, nullptr);
  if (r < 0) throw io_error(final_ + ": flushing the H.264 encoder failed: " + averr(r));
  m.drain(final_);
  r = av_write_trailer(m.oc);  // index, chapters; +faststart moves the index to the front
  if (r < 0) throw io_error(final_ + ": writing the MP4 index failed: " + averr(r) + " (disk full?)");
  r = avio_closep(&m.oc->pb);
  if (r < 0) throw io_error(final_ + ": closing the video failed: " + averr(r) + " (disk full?)");
  std::error_code ec;
  fs::rename(tmp_, final_, ec);
  if (ec) throw io_error(final_ + ": cannot rename the finished video into place: " + ec.message());
  finished_ = true;
  impl_.reset();
}

#else  // !MOGAGEN_HAVE_FFMPEG

struct VideoWriter::Impl {};

bool VideoWriter::available() { return false; }

VideoWriter::VideoWriter(const std::string& final_path, int, int, double, const VideoMeta&, int,
                         const std::string&)
    : final_(final_path) {
  throw Error(ExitCode::Usage,
              "this mogagen was built without FFmpeg; install libavcodec-dev libavformat-dev "
              "libswscale-dev and rebuild, or use --save-latents (cannot write " +
                  final_path + ")");
}
VideoWriter::~VideoWriter() = default;
void VideoWriter::write_frames(const Tensor&) { throw internal_error("no FFmpeg"); }
void VideoWriter::write_rgb8(const uint8_t*, int64_t) { throw internal_error("no FFmpeg"); }
void VideoWriter::finish() { throw internal_error("no FFmpeg"); }

#endif

}  // namespace mg
