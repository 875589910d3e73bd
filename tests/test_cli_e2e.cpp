// End-to-end tests of the mogagen binary on the CPU with a tiny random model: real MP4s,
// shot lists, batches, interruption, and every bad input's message and exit code.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <signal.h>

#include <chrono>
#include <cmath>
#include <thread>

#include "e2e_util.h"

using namespace e2e;
namespace fs = std::filesystem;

namespace {

// One tiny model for the whole suite.
class CliE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tiny_ = make_tiny_model("e2e", "tiny-t2v.json", 3);
    dir_ = tiny_.dir;
    model_ = tiny_.model;
  }
  void SetUp() override {
#ifndef MOGAGEN_HAVE_FFMPEG
    GTEST_SKIP() << "built without FFmpeg: no MP4 output to test";
#endif
    if (!tiny_.ok) {
      if (tiny_.lacks_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
      FAIL() << "make-random-model failed: " << tiny_.log;
    }
  }
  static std::string base() {
    return bin() + " --model " + q(model_) + " --device cpu --size 64x48 --steps 3 --seed 5 ";
  }
  static nlohmann::json probe(const std::string& file) {
    auto r = sh("ffprobe -v error -count_frames -show_streams -show_format -show_chapters -of json " + q(file));
    return r.code == 0 ? nlohmann::json::parse(r.out, nullptr, false) : nlohmann::json();
  }
  static TinyModel tiny_;
  static std::string dir_, model_;
};
TinyModel CliE2E::tiny_;
std::string CliE2E::dir_, CliE2E::model_;

}  // namespace

TEST_F(CliE2E, PromptRendersAPlayableMp4) {
  if (!have("ffprobe")) GTEST_SKIP() << "ffprobe not installed";
  const std::string out = dir_ + "/one.mp4";
  auto r = sh(base() + "--prompt 'a red circle moves left' --frames 9 --fps 24 -o " + q(out) +
              " --save-latents " + q(dir_ + "/one.latents.safetensors"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = probe(out);
  ASSERT_TRUE(j.is_object()) << "ffprobe failed on " << out;
  const auto& s = j["streams"][0];
  EXPECT_EQ(s["codec_name"], "h264");
  EXPECT_EQ(s["width"], 64);
  EXPECT_EQ(s["height"], 48);
  EXPECT_EQ(s["r_frame_rate"], "24/1");
  EXPECT_EQ(s["pix_fmt"], "yuv420p");
  EXPECT_EQ(s["nb_read_frames"], "9");
  const auto& tags = j["format"]["tags"];
  EXPECT_NE(tags.dump().find("a red circle moves left"), std::string::npos) << tags.dump();
  EXPECT_NE(tags.dump().find("seed 5"), std::string::npos) << tags.dump();
}

TEST_F(CliE2E, DecodedFramesMatchEngineFrames) {
  if (!have("ffmpeg")) GTEST_SKIP() << "ffmpeg not installed";
  // Render, then decode the saved latents again straight to raw frames through the tool in
  // tools/ (frames-dump) and compare with what ffmpeg decodes from the MP4.
  const std::string out = dir_ + "/psnr.mp4", lat = dir_ + "/psnr.safetensors";
  auto r = sh(base() + "--prompt 'a blue square grows' --frames 5 --size 128x96 -o " + q(out) +
              " --save-latents " + q(lat) + " --crf 10");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string raw_engine = dir_ + "/engine.rgb";
  r = sh(bin() + " --model " + q(model_) + " --device cpu --decode-latents " + q(lat) +
         " --dump-rgb " + q(raw_engine) + " -o " + q(dir_ + "/psnr2.mp4"));
  ASSERT_EQ(r.code, 0) << r.out;
  // Chroma is upsampled back with bicubic filtering and full chroma interpolation.
  auto dec = sh("ffmpeg -v error -i " + q(out) +
                " -sws_flags bicubic+accurate_rnd+full_chroma_int -f rawvideo -pix_fmt rgb24 - | "
                "od -An -v -tu1 -w1");
  ASSERT_EQ(dec.code, 0);
  std::ifstream f(raw_engine, std::ios::binary);
  std::string eng((std::istreambuf_iterator<char>(f)), {});
  std::vector<uint8_t> a;
  for (size_t p = 0; p < dec.out.size();) {
    while (p < dec.out.size() && (dec.out[p] == ' ' || dec.out[p] == '\n')) ++p;
    if (p >= dec.out.size()) break;
    a.push_back(uint8_t(std::atoi(dec.out.c_str() + p)));
    while (p < dec.out.size() && dec.out[p] != '\n') ++p;
  }
  ASSERT_EQ(a.size(), eng.size());
  ASSERT_EQ(eng.size(), size_t(5 * 128 * 96 * 3));
  const double psnr = testutil::psnr8(a, std::vector<uint8_t>(eng.begin(), eng.end()));
  EXPECT_GE(psnr, 35.0);
}

TEST_F(CliE2E, ShotListGivesChaptersAndMetadata) {
  if (!have("ffprobe")) GTEST_SKIP() << "ffprobe not installed";
  const std::string shots = dir_ + "/shots.json", out = dir_ + "/film.mp4";
  write_file(shots, R"({"fps": 24, "shots": [
    {"prompt": "a red circle moves left", "frames": 5},
    {"prompt": "a green square turns", "frames": 4},
    {"prompt": "a blue triangle grows", "frames": 8}]})");
  auto r = sh(base() + "--shots " + q(shots) + " -o " + q(out) + " --preview " + q(dir_ + "/film.png"));
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = probe(out);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["streams"][0]["nb_read_frames"], "17");
  ASSERT_EQ(j["chapters"].size(), 3u) << j.dump();
  EXPECT_NE(j["chapters"][1]["tags"]["title"].get<std::string>().find("green square"), std::string::npos);
  EXPECT_NEAR(std::stod(j["chapters"][1]["start_time"].get<std::string>()), 5.0 / 24, 1e-3);
  EXPECT_NEAR(std::stod(j["chapters"][2]["end_time"].get<std::string>()), 17.0 / 24, 1e-3);
  const std::string tags = j["format"]["tags"].dump();
  EXPECT_NE(tags.find("blue triangle"), std::string::npos);
  EXPECT_TRUE(fs::exists(dir_ + "/film.png"));
}

TEST_F(CliE2E, ShotLengthsAreRoundedWithANote) {
  const std::string shots = dir_ + "/round.json";
  write_file(shots, R"({"shots": [{"prompt": "a", "frames": 6}, {"prompt": "b", "frames": 5}]})");
  auto r = sh(base() + "--shots " + q(shots) + " -o " + q(dir_ + "/round.mp4"));
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("shot 1: 6"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("rounded to 5"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("shot 2: 5"), std::string::npos) << r.out;
}

TEST_F(CliE2E, BatchRendersGoodJobsReportsBadAndResumes) {
  const std::string b = dir_ + "/batch", jobs = b + "/jobs.jsonl";
  fs::create_directories(b);
  write_file(jobs,
             "{\"prompt\": \"a red circle\", \"output\": \"" + b + "/a.mp4\", \"frames\": 5}\n"
             "{\"prompt\": \"a bad job\", \"output\": \"" + b + "/b.mp4\", \"size\": \"60x48\"}\n"
             "\n"
             "{\"prompt\": \"a white square\", \"output\": \"" + b + "/c.mp4\", \"frames\": 5}\n");
  auto r = sh(base() + "--batch " + q(jobs));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(fs::exists(b + "/a.mp4"));
  EXPECT_FALSE(fs::exists(b + "/b.mp4"));
  EXPECT_TRUE(fs::exists(b + "/c.mp4"));
  EXPECT_NE(r.out.find("jobs.jsonl:2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("multiples of 16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("2 rendered"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("1 failed"), std::string::npos) << r.out;
  const auto t_a = fs::last_write_time(b + "/a.mp4");
  // Rerun: the finished jobs are skipped, the bad one fails again.
  r = sh(base() + "--batch " + q(jobs));
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("2 skipped"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("0 rendered"), std::string::npos) << r.out;
  EXPECT_EQ(fs::last_write_time(b + "/a.mp4"), t_a);
}

TEST_F(CliE2E, InterruptedRunLeavesNoFinishedLookingFile) {
  const std::string d = dir_ + "/intr";
  fs::create_directories(d);
  const std::string out = d + "/long.mp4";
  // Many steps so the run is still sampling when the signal arrives.
  const std::string cmd = base() + "--prompt 'a long render' --steps 1000 --frames 81 -o " + q(out);
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", ("exec " + cmd + " >/dev/null 2>&1").c_str(), (char*)nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 130);
  EXPECT_FALSE(fs::exists(out));
  for (const auto& e : fs::directory_iterator(d)) ADD_FAILURE() << "left behind: " << e.path();
}

// ---- bad inputs: message and exit code --------------------------------------------------
struct BadCase {
  const char* name;
  std::string args;
  int code;
  std::vector<std::string> needles;
};

TEST_F(CliE2E, BadInputsGiveClearMessagesAndExitCodes) {
  const std::string d = dir_ + "/bad";
  fs::create_directories(d);
  write_file(d + "/unknown.json", "{\n  \"shots\": [\n    {\"prompt\": \"x\", \"frames\": 5, \"promt\": \"y\"}\n  ]\n}\n");
  write_file(d + "/broken.json", "{\"shots\": [ {\"prompt\": \"x\" ]}");
  write_file(d + "/noshots.json", "{\"prompt\": \"x\"}");
  write_file(d + "/type.json", "{\"steps\": \"many\", \"shots\": [{\"prompt\": \"x\", \"frames\": 5}]}");
  const std::string o = " -o " + q(d + "/x.mp4");
  std::vector<BadCase> cases = {
      {"size", base() + "-p hi --size 100x48" + o, 2, {"multiples of 16", "100x48"}},
      {"size-format", base() + "-p hi --size big" + o, 2, {"WIDTHxHEIGHT", "big"}},
      {"frames", base() + "-p hi --frames 10" + o, 2, {"4k+1", "10", "nearest valid: 9"}},
      {"unknown-key", base() + "--shots " + q(d + "/unknown.json") + o, 3,
       {"unknown.json: line 3, column 34", "unknown key \"promt\"", "did you mean \"prompt\""}},
      {"bad-json", base() + "--shots " + q(d + "/broken.json") + o, 3, {"broken.json: line 1", "invalid JSON"}},
      {"not-a-shot-list", base() + "--shots " + q(d + "/noshots.json") + o, 3, {"\"shots\" array"}},
      {"wrong-type", base() + "--shots " + q(d + "/type.json") + o, 3, {"line 1", "\"steps\" must be an integer", "\"many\""}},
      {"missing-weights", bin() + " --model " + q(d + "/nope") + " -p hi" + o, 4,
       {"does not exist", "Getting Wan2.1 weights"}},
      {"unwritable", base() + "-p hi -o /nonexistent-dir/x.mp4", 5, {"/nonexistent-dir", "does not exist"}},
      {"not-mp4", base() + "-p hi -o " + q(d + "/x.avi"), 2, {".mp4", "x.avi"}},
      {"sampler", base() + "-p hi --sampler ddim" + o, 2, {"unipc or euler", "ddim"}},
      {"two-modes", base() + "-p hi --shots " + q(d + "/unknown.json") + o, 2, {"only one of"}},
      {"moga-without-routers", base() + "-p hi --attention moga --frames 5" + o, 4, {"router", "--attention dense"}},
      {"bad-flag", bin() + " --no-such-flag", 2, {"no-such-flag"}},
      {"bad-device", base() + "-p hi --device gpu" + o, 2, {"--device", "'gpu'"}},
      {"missing-latents", base() + "--decode-latents " + q(d + "/none.safetensors") + o, 3,
       {"none.safetensors", "does not exist", "--save-latents"}},
  };
  for (const auto& c : cases) {
    auto r = sh(c.args);
    EXPECT_EQ(r.code, c.code) << c.name << ": " << r.out;
    for (const auto& n : c.needles) EXPECT_NE(r.out.find(n), std::string::npos) << c.name << " lacks '" << n << "': " << r.out;
    EXPECT_FALSE(fs::exists(d + "/x.mp4")) << c.name;
  }
  // unwritable folder (exists, but read-only) when not running as root
  if (geteuid() != 0) {
    fs::create_directories(d + "/ro");
    fs::permissions(d + "/ro", fs::perms::owner_read | fs::perms::owner_exec);
    auto r = sh(base() + "-p hi -o " + q(d + "/ro/x.mp4"));
    EXPECT_EQ(r.code, 5) << r.out;
    EXPECT_NE(r.out.find("not writable"), std::string::npos) << r.out;
  }
}

TEST_F(CliE2E, MogaModelRendersAShotListAndReportsRouting) {
  const std::string m = dir_ + "/tiny-moga", out = dir_ + "/moga.mp4", shots = dir_ + "/moga.json";
  auto r = sh(bin() + " make-random-model --config " + q(src() + "/configs/tiny-moga-t2v.json") +
              " --seed 4 -o " + q(m));
  ASSERT_EQ(r.code, 0) << r.out;
  write_file(shots, R"({"shots": [{"prompt": "a red circle", "frames": 9}, {"prompt": "a blue square", "frames": 8}]})");
  r = sh(bin() + " --model " + q(m) + " --device cpu --size 64x48 --steps 2 --seed 1 --shots " +
         q(shots) + " -o " + q(out) + " --verbose");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(out));
  EXPECT_NE(r.out.find("MoGA M=3"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("MoGA routing"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("block 1:"), std::string::npos) << r.out;
  // and the balance over the whole sampling: 2 steps x (cond + uncond) forwards
  EXPECT_NE(r.out.find("MoGA routing over the whole sampling (4 forwards"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("x fair share at worst (step"), std::string::npos) << r.out;
  // dense attention on the same checkpoint is allowed on request
  r = sh(bin() + " --model " + q(m) + " --device cpu --size 64x48 --steps 1 --attention dense -p x --frames 5 -o " +
         q(dir_ + "/moga-dense.mp4"));
  EXPECT_EQ(r.code, 0) << r.out;
}
