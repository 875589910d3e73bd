// umT5 encoder and tokenizer: golden outputs, the exact relative-position buckets, Wan's
// prompt clean-up, EOS and truncation.
#include "test_util.h"
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/tokenizer.h"
#include "models/umt5/umt5.h"
#include "pipeline/random_model.h"
#include "pipeline/verify.h"

#ifdef MOGAGEN_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

using namespace mg;
namespace fs = std::filesystem;

namespace {
std::string golden() { return testutil::golden_dir(); }
}  // namespace

class UMT5Golden : public ::testing::TestWithParam<const char*> {};

TEST_P(UMT5Golden, MatchesReference) {
  const std::string dir = golden() + "/" + GetParam() + "/t5";
  if (!fs::exists(dir)) GTEST_SKIP() << "golden data absent: " << dir;
  auto ops = make_cpu_ops();
  auto lines = verify_t5(dir, *ops);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_LE(lines[0].rel_err, 1e-4) << lines[0].name;
}

INSTANTIATE_TEST_SUITE_P(Sets, UMT5Golden, ::testing::Values("wan-a", "wan-c"));

TEST(UMT5, RelativeBucketTableIsExact) {
  // wan-notes §2.3: offsets for n = |rel| >= 8, with the integer boundaries 16, 32, 64.
  struct Row {
    int lo, hi, off;
  } rows[] = {{8, 11, 8},   {12, 15, 9},  {16, 22, 10}, {23, 31, 11},
              {32, 45, 12}, {46, 63, 13}, {64, 90, 14}, {91, 400, 15}};
  for (const auto& r : rows)
    for (int n = r.lo; n <= r.hi; ++n) {
      EXPECT_EQ(t5_relative_bucket(n, 32, 128), 16 + r.off) << "rel +" << n;
      EXPECT_EQ(t5_relative_bucket(-n, 32, 128), r.off) << "rel -" << n;
    }
  for (int n = 0; n < 8; ++n) {
    EXPECT_EQ(t5_relative_bucket(-n, 32, 128), n);
    if (n) {
      EXPECT_EQ(t5_relative_bucket(n, 32, 128), 16 + n);
    }
  }
}

TEST(UMT5, ConfigFromHuggingFaceJson) {
  auto c = UMT5Config::from_json(nlohmann::json::parse(
      R"({"vocab_size": 300, "d_model": 48, "d_kv": 12, "d_ff": 80, "num_layers": 3, "num_heads": 4})"));
  EXPECT_EQ(c.d_model, 48);
  EXPECT_EQ(c.num_layers, 3);
  EXPECT_EQ(c.expected_weights().size(), 2u + 3u * 10u);
  EXPECT_THROW(UMT5Config::from_json(nlohmann::json::parse(R"({"d_model": "big"})")), Error);
}

TEST(Tokenizer, CleanPromptLikeWan) {
  EXPECT_EQ(clean_prompt("  a  cat\t\n on   a mat  "), "a cat on a mat");
  EXPECT_EQ(clean_prompt("\xef\xbc\xa1\xef\xbc\x8c\xef\xbd\x82"), "A,b");  // full-width A , b
  EXPECT_EQ(clean_prompt("&amp;lt;b&amp;gt; &quot;x&quot;"), "<b> \"x\"");  // unescaped twice
  EXPECT_EQ(clean_prompt("\xe2\x80\x9cquoted\xe2\x80\x9d it\xe2\x80\x99s"), "\"quoted\" it's");
  EXPECT_EQ(clean_prompt("a\x01" "b\x7f" "c"), "abc");
  EXPECT_EQ(clean_prompt("x\xe3\x80\x80y"), "x y");  // ideographic space
  EXPECT_EQ(clean_prompt("&#65;&#x42;"), "AB");
}

TEST(Tokenizer, EncodesWithEosAndTruncates) {
#ifndef MOGAGEN_HAVE_SENTENCEPIECE
  GTEST_SKIP() << "built without SentencePiece";
#else
  std::string t = fs::temp_directory_path().string() + "/mogagen-tok-XXXXXX";
  const std::string dir = mkdtemp(t.data());
  std::ofstream(dir + "/corpus.txt") << caption_corpus();
  auto st = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir + "/corpus.txt --model_prefix=" + dir +
      "/spiece --vocab_size=120 --model_type=unigram --hard_vocab_limit=false --pad_id=0 "
      "--eos_id=1 --bos_id=2 --unk_id=3 --minloglevel=2 --num_threads=1");
  ASSERT_TRUE(st.ok()) << st.ToString();
  Tokenizer tok = Tokenizer::open(dir);  // finds spiece.model in the folder
  auto ids = tok.encode("a red circle moves left");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.back(), 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_GE(ids[i], 3);
    EXPECT_LT(ids[i], tok.vocab_size());
  }
  // cleaning happens before encoding: these two prompts are the same text
  EXPECT_EQ(tok.encode("a  red\tcircle"), tok.encode("a red circle"));
  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "red circle blue square ";
  auto many = tok.encode(long_prompt);
  EXPECT_EQ(many.size(), 512u);
  EXPECT_EQ(many.back(), 1);
  EXPECT_EQ(tok.encode(long_prompt, 16).size(), 16u);
  EXPECT_THROW(Tokenizer::open(dir + "/missing.model"), Error);
#endif
}
