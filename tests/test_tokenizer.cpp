// Tokenizer: Wan's prompt clean-up (ftfy's relevant fixes, HTML unescaped twice, whitespace),
// and SentencePiece encoding with EOS and the 512-token limit, on a tiny model trained here.
#include "test_util.h"
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "io/tokenizer.h"
#include "mogagen/error.h"
#include "pipeline/random_model.h"

#ifdef MOGAGEN_HAVE_SENTENCEPIECE
#include <sentencepiece_trainer.h>
#endif

using namespace mg;
namespace fs = std::filesystem;

TEST(Tokenizer, CleanPromptWhitespace) {
  EXPECT_EQ(clean_prompt("  a  cat\t\n on   a mat  "), "a cat on a mat");
  EXPECT_EQ(clean_prompt("a\r\nb\fc"), "a b c");           // CR LF and form feed are whitespace
  EXPECT_EQ(clean_prompt("x\xe3\x80\x80y"), "x y");        // ideographic space
  EXPECT_EQ(clean_prompt("x\xc2\xa0\xe2\x80\x83y"), "x y");  // no-break space, em space
  EXPECT_EQ(clean_prompt(" \t\n "), "");
  EXPECT_EQ(clean_prompt(""), "");
}

TEST(Tokenizer, CleanPromptFtfyFixes) {
  // full-width forms -> ASCII: "Ａ，ｂ" and the Wan negative prompt's "，"
  EXPECT_EQ(clean_prompt("\xef\xbc\xa1\xef\xbc\x8c\xef\xbd\x82"), "A,b");
  EXPECT_EQ(clean_prompt("\xe8\x89\xb2\xe8\xb0\x83\xe8\x89\xb3\xe4\xb8\xbd\xef\xbc\x8c\xe8\xbf\x87\xe6\x9b\x9d"),
            "\xe8\x89\xb2\xe8\xb0\x83\xe8\x89\xb3\xe4\xb8\xbd,\xe8\xbf\x87\xe6\x9b\x9d");
  EXPECT_EQ(clean_prompt("\xef\xbf\xa5" "5"), "\xc2\xa5" "5");  // full-width yen sign
  // curly quotes -> straight
  EXPECT_EQ(clean_prompt("\xe2\x80\x9cquoted\xe2\x80\x9d it\xe2\x80\x99s"), "\"quoted\" it's");
  // stray C1 controls are read as Windows-1252 (then straightened)
  EXPECT_EQ(clean_prompt("\xc2\x93hi\xc2\x94 \xc2\x80"), "\"hi\" \xe2\x82\xac");
  // control characters, byte order mark and terminal colour codes removed
  EXPECT_EQ(clean_prompt("a\x01" "b\x7f" "c\x0b" "d"), "abcd");
  EXPECT_EQ(clean_prompt("\xef\xbb\xbfhi"), "hi");
  EXPECT_EQ(clean_prompt("\x1b[31mred\x1b[0m car"), "red car");
}

TEST(Tokenizer, CleanPromptHtml) {
  EXPECT_EQ(clean_prompt("&amp;lt;b&amp;gt; &quot;x&quot;"), "<b> \"x\"");  // unescaped twice
  EXPECT_EQ(clean_prompt("&#65;&#x42;&#X43;&#68"), "ABCD");
  EXPECT_EQ(clean_prompt("it&#39;s &apos;ok&apos; a&nbsp;b"), "it's 'ok' a b");
  EXPECT_EQ(clean_prompt("fish &amp chips"), "fish & chips");  // legacy name, no semicolon
  EXPECT_EQ(clean_prompt("this&not that"), "this\xc2\xac that");  // as Python's html.unescape
  EXPECT_EQ(clean_prompt("&unknown; & &#;"), "&unknown; & &#;");
  EXPECT_EQ(clean_prompt("&#59;"), ";");
  EXPECT_EQ(clean_prompt("a&NBSP;b"), "a b");  // ftfy: capitalised lower-case names
  // ftfy also decodes references (to a fixed point) while no line so far has a literal '<'
  EXPECT_EQ(clean_prompt("&amp;amp;lt;b&amp;amp;gt;"), "<b>");
  EXPECT_EQ(clean_prompt("<i> &amp;amp;lt;"), "<i> &lt;");
  EXPECT_EQ(clean_prompt("a &amp;amp;lt;\n<b>"), "a < <b>");
  EXPECT_EQ(clean_prompt("<b>\n&amp;amp;lt;"), "<b> &lt;");
  // references that decode to curly quotes or full-width forms are fixed by ftfy's next round
  EXPECT_EQ(clean_prompt("&ldquo;hi&rdquo;"), "\"hi\"");
}

TEST(Tokenizer, EncodesWithEosAndTruncates) {
#ifndef MOGAGEN_HAVE_SENTENCEPIECE
  GTEST_SKIP() << "built without SentencePiece";
#else
  const testutil::TempDir tmp("tok");
  const std::string& dir = tmp.path;
  std::ofstream(dir + "/corpus.txt") << caption_corpus();
  const auto st = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + dir + "/corpus.txt --model_prefix=" + dir +
      "/spiece --vocab_size=100 --model_type=unigram --hard_vocab_limit=false --pad_id=0 "
      "--eos_id=1 --bos_id=2 --unk_id=3 --minloglevel=2 --num_threads=1");
  ASSERT_TRUE(st.ok()) << st.ToString();

  Tokenizer tok = Tokenizer::open(dir);  // finds spiece.model in the folder
  const auto ids = tok.encode("a red circle moves left");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.back(), 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_GE(ids[i], 3);
    EXPECT_LT(ids[i], tok.vocab_size());
  }
  EXPECT_EQ(tok.encode(""), std::vector<int64_t>{1});
  // cleaning happens before encoding: these prompts are the same text
  EXPECT_EQ(tok.encode("a  red\tcircle"), tok.encode("a red circle"));
  EXPECT_EQ(tok.encode("\xef\xbd\x81 red circle"), tok.encode("a red circle"));

  std::string long_prompt;
  for (int i = 0; i < 400; ++i) long_prompt += "red circle blue square ";
  const auto many = tok.encode(long_prompt);
  ASSERT_EQ(many.size(), 512u);  // 511 pieces + EOS
  EXPECT_EQ(many.back(), 1);
  EXPECT_NE(many[510], 1);
  const auto few = tok.encode(long_prompt, 16);
  ASSERT_EQ(few.size(), 16u);
  EXPECT_EQ(few.back(), 1);
  EXPECT_EQ(std::vector<int64_t>(few.begin(), few.end() - 1),
            std::vector<int64_t>(many.begin(), many.begin() + 15));

  // the other places a folder may keep spiece.model
  fs::create_directories(dir + "/m/tokenizer");
  fs::copy_file(dir + "/spiece.model", dir + "/m/tokenizer/spiece.model");
  EXPECT_EQ(Tokenizer::open(dir + "/m").encode("a red circle"), tok.encode("a red circle"));
  fs::create_directories(dir + "/n/google/umt5-xxl");
  fs::copy_file(dir + "/spiece.model", dir + "/n/google/umt5-xxl/spiece.model");
  EXPECT_EQ(Tokenizer::open(dir + "/n").encode("a red circle"), tok.encode("a red circle"));
  EXPECT_EQ(Tokenizer::open(dir + "/spiece.model").encode("a red circle"), tok.encode("a red circle"));

  EXPECT_THROW(Tokenizer::open(dir + "/missing.model"), Error);
  fs::create_directories(dir + "/empty");
  EXPECT_THROW(Tokenizer::open(dir + "/empty"), Error);  // a folder without spiece.model
  std::ofstream(dir + "/bad.model") << "not a model";
  EXPECT_THROW(Tokenizer::open(dir + "/bad.model"), Error);
  fs::remove_all(dir);
#endif
}
