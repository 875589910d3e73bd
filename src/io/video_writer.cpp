#include "io/video_writer.h"

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "mogagen/error.h"
#include "mogagen/log.h"

#ifdef MOGAGEN_HAVE_FFMPEG
extern "C" {
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libavutil/opt.h>
#include <libswscale/swscale.h>
}
#endif

namespace fs = std::filesystem;

namespace mg {

std::vector<uint8_t> frames_to_rgb8(const Tensor& frames) {
  if (frames.ndim() != 4 || frames.dim(0) != 3)
    throw internal_error("frames_to_rgb8: expected [3, n, H, W], got " + frames.str());
  const int64_t n = frames.dim(1), H = frames.dim(2), W = frames.dim(3), P = H * W;
  std::vector<uint8_t> out(size_t(n * P * 3));
  const float* f = frames.f32();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t p = 0; p < P; ++p)
      for (int c = 0; c < 3; ++c) {
        const float v = std::nearbyint((f[(c * n + t) * P + p] + 1.0f) * 127.5f);
        out[size_t((t * P + p) * 3 + c)] = uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
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
}  // namespace

struct VideoWriter::Impl {
  AVFormatContext* oc = nullptr;
  AVCodecContext* ctx = nullptr;
  AVStream* st = nullptr;
  SwsContext* sws = nullptr;
  AVFrame* frame = nullptr;
  AVPacket* pkt = nullptr;
  int w = 0, h = 0;
  bool header = false;

  ~Impl() {
    if (sws) sws_freeContext(sws);
    av_frame_free(&frame);
    av_packet_free(&pkt);
    avcodec_free_context(&ctx);
    if (oc) {
      if (oc->pb) avio_closep(&oc->pb);
      avformat_free_context(oc);
    }
  }

  void drain(const std::string& path) {
    for (;;) {
      int r = avcodec_receive_packet(ctx, pkt);
      if (r == AVERROR(EAGAIN) || r == AVERROR_EOF) return;
      if (r < 0) throw io_error(path + ": encoding failed: " + averr(r));
      av_packet_rescale_ts(pkt, ctx->time_base, st->time_base);
      pkt->stream_index = st->index;
      r = av_interleaved_write_frame(oc, pkt);
      if (r < 0) throw io_error(path + ": writing failed: " + averr(r) + " (disk full?)");
    }
  }
};

VideoWriter::VideoWriter(const std::string& final_path, int width, int height, double fps,
                         const VideoMeta& meta, int crf, const std::string& preset)
    : impl_(std::make_unique<Impl>()), final_(final_path) {
  if (width <= 0 || height <= 0 || width % 2 || height % 2)
    throw usage_error(final_path + ": H.264 4:2:0 needs an even width and height, got " +
                      std::to_string(width) + "x" + std::to_string(height));
  if (!(fps > 0)) throw usage_error(final_path + ": fps must be positive");
  const fs::path fp(final_path);
  fs::path dir = fp.parent_path();
  if (dir.empty()) dir = ".";
  tmp_ = (dir / ("." + fp.filename().string() + ".partial.mp4")).string();
  Impl& m = *impl_;
  av_log_set_level(spdlog::get_level() <= spdlog::level::debug ? AV_LOG_INFO : AV_LOG_ERROR);
  m.w = width;
  m.h = height;
  int r = avformat_alloc_output_context2(&m.oc, nullptr, "mp4", tmp_.c_str());
  if (r < 0 || !m.oc) throw internal_error("cannot create an MP4 muxer: " + averr(r));
  const AVCodec* codec = avcodec_find_encoder_by_name("libx264");
  if (!codec)
    throw Error(ExitCode::Device, "libx264 not available in this FFmpeg build (install "
                                  "libavcodec with x264 support, e.g. Debian's libavcodec59)");
  m.st = avformat_new_stream(m.oc, nullptr);
  m.ctx = avcodec_alloc_context3(codec);
  if (!m.st || !m.ctx) throw internal_error("out of memory creating the encoder");
  const AVRational rate = av_d2q(fps, 1 << 20);
  m.ctx->width = width;
  m.ctx->height = height;
  m.ctx->pix_fmt = AV_PIX_FMT_YUV420P;
  m.ctx->time_base = av_inv_q(rate);
  m.ctx->framerate = rate;
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
  if (r < 0) throw usage_error(final_path + ": cannot open the H.264 encoder: " + averr(r));
  avcodec_parameters_from_context(m.st->codecpar, m.ctx);
  m.st->time_base = m.ctx->time_base;
  m.st->avg_frame_rate = rate;
  m.st->r_frame_rate = rate;
  for (const auto& [k, v] : meta.tags) av_dict_set(&m.oc->metadata, k.c_str(), v.c_str(), 0);
  for (size_t i = 0; i < meta.chapters.size(); ++i) {
    const Chapter& c = meta.chapters[i];
    AVChapter* ch = static_cast<AVChapter*>(av_mallocz(sizeof(AVChapter)));
    if (!ch) throw internal_error("out of memory");
    ch->id = int64_t(i);
    ch->time_base = m.ctx->time_base;
    ch->start = c.start_frame;
    ch->end = c.end_frame;
    av_dict_set(&ch->metadata, "title", c.title.c_str(), 0);
    int nb = int(m.oc->nb_chapters);
    av_dynarray_add(&m.oc->chapters, &nb, ch);
    m.oc->nb_chapters = unsigned(nb);
  }
  r = avio_open(&m.oc->pb, tmp_.c_str(), AVIO_FLAG_WRITE);
  if (r < 0) throw io_error(final_path + ": cannot write in '" + dir.string() + "': " + averr(r));
  AVDictionary* mopts = nullptr;
  av_dict_set(&mopts, "movflags", "+faststart", 0);
  r = avformat_write_header(m.oc, &mopts);
  av_dict_free(&mopts);
  if (r < 0) throw io_error(final_path + ": cannot write the MP4 header: " + averr(r));
  m.header = true;
  m.frame = av_frame_alloc();
  m.pkt = av_packet_alloc();
  m.frame->format = AV_PIX_FMT_YUV420P;
  m.frame->width = width;
  m.frame->height = height;
  m.frame->color_primaries = AVCOL_PRI_BT709;
  m.frame->color_trc = AVCOL_TRC_BT709;
  m.frame->colorspace = AVCOL_SPC_BT709;
  m.frame->color_range = AVCOL_RANGE_MPEG;
  if (av_frame_get_buffer(m.frame, 0) < 0) throw internal_error("out of memory for a frame");
  m.sws = sws_getContext(width, height, AV_PIX_FMT_RGB24, width, height, AV_PIX_FMT_YUV420P,
                         SWS_BICUBIC | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, nullptr, nullptr, nullptr);
  if (!m.sws) throw internal_error("cannot create the RGB -> YUV converter");
  const int* cs = sws_getCoefficients(SWS_CS_ITU709);
  sws_setColorspaceDetails(m.sws, cs, 1, cs, 0, 0, 1 << 16, 1 << 16);
}

VideoWriter::~VideoWriter() {
  if (!finished_) {
    impl_.reset();  // closes the file
    std::error_code ec;
    fs::remove(tmp_, ec);
  }
}

void VideoWriter::write_frames(const Tensor& frames) {
  if (finished_) throw internal_error("write_frames after finish");
  Impl& m = *impl_;
  if (frames.ndim() != 4 || frames.dim(2) != m.h || frames.dim(3) != m.w)
    throw internal_error("write_frames: expected [3, n, " + std::to_string(m.h) + ", " +
                         std::to_string(m.w) + "], got " + frames.str());
  const auto rgb = frames_to_rgb8(frames);
  const int64_t n = frames.dim(1);
  const size_t per = size_t(m.w) * m.h * 3;
  for (int64_t i = 0; i < n; ++i) {
    if (av_frame_make_writable(m.frame) < 0) throw internal_error("frame not writable");
    const uint8_t* src[1] = {rgb.data() + i * per};
    const int stride[1] = {m.w * 3};
    sws_scale(m.sws, src, stride, 0, m.h, m.frame->data, m.frame->linesize);
    m.frame->pts = frames_;
    const int r = avcodec_send_frame(m.ctx, m.frame);
    if (r < 0) throw io_error(final_ + ": encoding failed: " + averr(r));
    m.drain(final_);
    ++frames_;
  }
}

void VideoWriter::finish() {
  if (finished_) return;
  Impl& m = *impl_;
  int r = avcodec_send_frame(m.ctx, nullptr);
  if (r < 0) throw io_error(final_ + ": flushing the encoder failed: " + averr(r));
  m.drain(final_);
  r = av_write_trailer(m.oc);
  if (r < 0) throw io_error(final_ + ": writing the MP4 trailer failed: " + averr(r));
  avio_closep(&m.oc->pb);
  std::error_code ec;
  fs::rename(tmp_, final_, ec);
  if (ec) throw io_error(final_ + ": cannot rename the finished video into place: " + ec.message());
  finished_ = true;
  impl_.reset();
}

#else  // !MOGAGEN_HAVE_FFMPEG

struct VideoWriter::Impl {};

VideoWriter::VideoWriter(const std::string& final_path, int, int, double, const VideoMeta&, int,
                         const std::string&)
    : final_(final_path) {
  throw Error(ExitCode::Usage,
              "this mogagen was built without FFmpeg, so it cannot write " + final_path +
                  "; install libavcodec-dev libavformat-dev libswscale-dev and rebuild, or use "
                  "--save-latents");
}
VideoWriter::~VideoWriter() = default;
void VideoWriter::write_frames(const Tensor&) {}
void VideoWriter::finish() {}

#endif

}  // namespace mg
