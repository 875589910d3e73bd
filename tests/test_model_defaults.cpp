// A model folder's own sampling defaults (model_index.json "_mogagen.defaults"): they apply
// when the user sets nothing, and every user setting (config file, shot list, flags) wins.
// Runs the binary on the CPU with a tiny random model; frames come back through --dump-rgb,
// so no FFmpeg is needed.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fstream>

#include "e2e_util.h"

using namespace e2e;
namespace fs = std::filesystem;

namespace {

class ModelDefaults : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tiny_ = make_tiny_model("defaults", "tiny-t2v.json", 4);
    dir_ = tiny_.dir;
    model_ = tiny_.model;
    if (!tiny_.ok) return;
    std::ifstream in(model_ + "/model_index.json");
    nlohmann::json idx = nlohmann::json::parse(in);
    idx["_mogagen"]["defaults"] = {{"size", "64x48"}, {"frames", 9},     {"steps", 2},
                                   {"shift", 3.0},    {"guidance", 4.0}, {"negative_prompt", ""}};
    write_file(model_ + "/model_index.json", idx.dump(2));
  }
  void SetUp() override {
    if (!tiny_.ok) {
      if (tiny_.lacks_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
      FAIL() << "make-random-model failed: " << tiny_.log;
    }
  }
  // Renders and returns the number of 8-bit RGB bytes written by --dump-rgb (or -1).
  static int64_t render(const std::string& args, e2e::Run* run = nullptr) {
    const std::string raw = dir_ + "/out.rgb";
    fs::remove(raw);
    e2e::Run r = sh(bin() + " --model " + q(model_) + " --device cpu --seed 2 --dump-rgb " +
                    q(raw) + " " + args);
    if (run) *run = r;
    std::error_code ec;
    return r.code == 0 && fs::exists(raw, ec) ? int64_t(fs::file_size(raw)) : -1;
  }
  static TinyModel tiny_;
  static std::string dir_, model_;
};
TinyModel ModelDefaults::tiny_;
std::string ModelDefaults::dir_, ModelDefaults::model_;

}  // namespace

TEST_F(ModelDefaults, ApplyWhenTheUserSetsNothing) {
  e2e::Run r;
  EXPECT_EQ(render("-p 'a red circle moves left on a blue background'", &r), 9 * 64 * 48 * 3)
      << r.out;
}

TEST_F(ModelDefaults, FlagsAndConfigFilesOverrideThem) {
  EXPECT_EQ(render("-p 'a red circle' --frames 5 --size 32x32"), 5 * 32 * 32 * 3);
  const std::string cfg = dir_ + "/cfg.json";
  write_file(cfg, R"({"size": "48x32", "frames": 13})");
  EXPECT_EQ(render("-p 'a red circle' --config " + q(cfg)), 13 * 48 * 32 * 3);
  // a flag still beats the config file
  EXPECT_EQ(render("-p 'a red circle' --config " + q(cfg) + " --frames 5"), 5 * 48 * 32 * 3);
}

TEST_F(ModelDefaults, ShotListsKeepTheirOwnLengthsWithoutANote) {
  const std::string shots = dir_ + "/shots.json";
  write_file(shots, R"({"shots": [{"prompt": "a red circle", "frames": 5},
                                   {"prompt": "a blue square", "frames": 8}]})");
  e2e::Run r;
  EXPECT_EQ(render("--shots " + q(shots), &r), 13 * 64 * 48 * 3) << r.out;
  EXPECT_EQ(r.out.find("are ignored"), std::string::npos) << r.out;
}

TEST_F(ModelDefaults, BadDefaultsNameTheFileAndField) {
  const std::string bad = dir_ + "/bad";
  fs::copy(model_, bad, fs::copy_options::recursive);
  std::ifstream in(bad + "/model_index.json");
  nlohmann::json idx = nlohmann::json::parse(in);
  idx["_mogagen"]["defaults"]["steps"] = "many";
  write_file(bad + "/model_index.json", idx.dump(2));
  e2e::Run r = sh(bin() + " --model " + q(bad) + " --device cpu -p 'x' --dump-rgb " +
                  q(dir_ + "/bad.rgb"));
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_NE(r.out.find("model_index.json"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("steps"), std::string::npos) << r.out;
}
