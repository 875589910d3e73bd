// Semantic tests of the trained default model (models/default, docs/training.md): what the
// rendered videos show, not the shapes of tensors. They skip, saying so, where the
// checkout has no trained default model. MOGAGEN_TEST_MODEL points them at another folder
// of the same kind.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <regex>

#include "e2e_util.h"
#include "mogagen/ops.h"
#include "video_analysis.h"

using namespace e2e;
namespace fs = std::filesystem;

namespace {

struct Model {
  std::string dir;
  int width = 0, height = 0;
  std::string why_not;  // non-empty: skip with this
};

Model find_model() {
  Model m;
  const char* env = std::getenv("MOGAGEN_TEST_MODEL");
  m.dir = env ? env : src() + "/models/default";
  const fs::path idx = fs::path(m.dir) / "model_index.json";
  std::error_code ec;
  if (!fs::exists(idx, ec)) {
    m.why_not = "no trained default model at " + m.dir + " (docs/training.md)";
    return m;
  }
  std::ifstream in(idx);
  const auto j = nlohmann::json::parse(in, nullptr, false);
  const std::string size = j.value("/_mogagen/defaults/size"_json_pointer, std::string());
  if (std::sscanf(size.c_str(), "%dx%d", &m.width, &m.height) != 2)
    m.why_not = idx.string() + " has no _mogagen.defaults.size";
  return m;
}

struct Render {
  video::Clip clip;
  std::string log;
};

Render render(const Model& m, const std::string& args, const std::string& tag,
              const std::string& device = "cpu") {
  static const std::string dir = tmpdir("default-model");
  const std::string raw = dir + "/" + tag + ".rgb";
  auto r = sh(bin() + " --model " + q(m.dir) + " --device " + device + " -v --dump-rgb " +
              q(raw) + " " + args);
  EXPECT_EQ(r.code, 0) << r.out;
  return {video::read_rgb(raw, m.width, m.height), r.out};
}

// Every "largest X.XXx fair share" of the --verbose routing report.
std::vector<double> routing_shares(const std::string& log) {
  std::vector<double> out;
  static const std::regex re("largest ([0-9.]+)x fair share");
  for (std::sregex_iterator it(log.begin(), log.end(), re), end; it != end; ++it)
    out.push_back(std::stod((*it)[1]));
  return out;
}

class DefaultModel : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = find_model();
    if (!model_.why_not.empty()) GTEST_SKIP() << model_.why_not;
  }
  Model model_;
};

}  // namespace

// One prompt per colour of the grammar. Every object must be seen with the named colour
// (the criterion), MoGA's routing must stay balanced (no group above twice its fair
// share in any block or step), and the motion words must be followed well above chance:
// at least 4 of the 6 prompts that name a direction move that way (more than 0.3 px per
// frame). A model deaf to the motion words moves the named way about one time in four
// (P(4 or more of 6) = 3.8%); the shipped model follows them in 79% of the renders of a
// sweep over other seeds (docs/training.md), not in every one, so a per-prompt motion
// assertion would test the seeds, not the model.
TEST_F(DefaultModel, SingleColourPromptsShowTheNamedColourAndMotion) {
  struct Case {
    const char* prompt;
    const char* colour;
    int dx, dy;  // expected motion sign (0: not checked)
  };
  const Case cases[] = {
      {"a red circle moves right on a black background", "red", 1, 0},
      {"a orange square moves left on a blue background", "orange", -1, 0},
      {"a yellow triangle moves up on a gray background", "yellow", 0, -1},
      {"a green circle moves down on a white background", "green", 0, 1},
      {"a cyan square grows on a black background", "cyan", 0, 0},
      {"a blue triangle moves right on a white background", "blue", 1, 0},
      {"a purple circle shrinks on a gray background", "purple", 0, 0},
      {"a white square moves left on a green background", "white", -1, 0},
  };
  double worst_share = 0;
  int i = 0, moving = 0, moved_right = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.prompt);
    const Render r = render(model_, "-p " + q(c.prompt) + " --seed " + std::to_string(100 + i),
                            "colour" + std::to_string(i));
    ++i;
    ASSERT_GT(r.clip.frames, 0);
    const video::Scene s = video::analyse(r.clip, 0, r.clip.frames);
    EXPECT_GT(s.object_share, 0.002) << "no object to be seen";
    const std::string seen = video::colour_name(s.object);
    EXPECT_EQ(seen, c.colour) << "object rgb " << s.object[0] << " " << s.object[1] << " " << s.object[2];
    const auto mv = video::motion(s);
    bool as_named = true;
    if (c.dx) as_named = as_named && c.dx * mv[0] > 0.3;
    if (c.dy) as_named = as_named && c.dy * mv[1] > 0.3;
    if (c.dx || c.dy) {
      ++moving;
      moved_right += as_named;
    }
    double share = 0;
    for (double v : routing_shares(r.log)) share = std::max(share, v);
    worst_share = std::max(worst_share, share);
    std::printf("%-52s seed %d: %-6s (%.2f %.2f %.2f), motion %+.2f %+.2f px/frame%s, largest group %.2fx\n",
                c.prompt, 99 + i, seen.c_str(), s.object[0], s.object[1], s.object[2], mv[0], mv[1],
                c.dx || c.dy ? (as_named ? " (as named)" : " (NOT as named)") : "", share);
  }
  EXPECT_GE(moved_right, 4) << "only " << moved_right << " of " << moving << " objects moved as named";
  EXPECT_GT(worst_share, 0.0) << "no routing report in --verbose output";
  EXPECT_LE(worst_share, 2.0) << "a MoGA group held more than twice its fair share";
}

// In a shot list each shot's object follows its own caption.
TEST_F(DefaultModel, EachShotFollowsItsOwnCaption) {
  const Render r = render(model_, "--shots " + q(src() + "/configs/shapes-shots.json"), "shots");
  ASSERT_EQ(r.clip.frames, 49);
  const int bounds[4] = {0, 17, 33, 49};
  const char* want[3] = {"red", "green", "blue"};
  for (int s = 0; s < 3; ++s) {
    SCOPED_TRACE("shot " + std::to_string(s + 1));
    const video::Scene sc = video::analyse(r.clip, bounds[s], bounds[s + 1]);
    EXPECT_EQ(video::colour_name(sc.object), want[s]);
  }
  const auto mv = video::motion(video::analyse(r.clip, 0, 17));
  EXPECT_GT(mv[0], 0.3) << "shot 1's square should move right";
  for (double v : routing_shares(r.log)) EXPECT_LE(v, 2.0);
}

// The same job on the CPU and the GPU (PSNR 30 dB or better).
TEST_F(DefaultModel, CpuAndGpuAgree) {
  if (!mg::cuda_available()) GTEST_SKIP() << "no CUDA device";
  const std::string args = "--shots " + q(src() + "/configs/shapes-shots.json");
  const Render a = render(model_, args, "cpu", "cpu");
  const Render b = render(model_, args, "gpu", "cuda");
  ASSERT_EQ(a.clip.rgb.size(), b.clip.rgb.size());
  const double psnr = testutil::psnr8(a.clip.rgb, b.clip.rgb);
  std::printf("CPU vs GPU PSNR: %.2f dB\n", psnr);
  EXPECT_GE(psnr, 30.0);
}

// `mogagen --prompt` with no --model renders with models/default, beside the binary's
// source tree, at that model's default size.
TEST_F(DefaultModel, UsedWhenNoModelIsGiven) {
  if (std::getenv("MOGAGEN_TEST_MODEL"))
    GTEST_SKIP() << "MOGAGEN_TEST_MODEL names another model; this test is about models/default";
  std::error_code ec;
  const fs::path beside = fs::path(bin()).parent_path() / ".." / "models" / "default";
  if (!fs::equivalent(beside, fs::path(model_.dir), ec))
    GTEST_SKIP() << "this build's binary is not in the source tree (" << bin()
                 << "): it looks for models/default beside itself";
  const std::string raw = tmpdir("default-model-implicit") + "/frames.rgb";
  const auto r = sh("env -u MOGAGEN_MODEL " + bin() +
                    " --device cpu -v --steps 2 --frames 5 --seed 3 --dump-rgb " + q(raw) +
                    " -p 'a red circle moves right on a black background'");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string dir = fs::weakly_canonical(fs::path(model_.dir), ec).string();
  EXPECT_NE(r.out.find("loaded " + dir + " "), std::string::npos) << r.out;
  const video::Clip c = video::read_rgb(raw, model_.width, model_.height);
  EXPECT_EQ(c.frames, 5);
  EXPECT_EQ(c.rgb.size(), size_t(5) * model_.width * model_.height * 3);
}
