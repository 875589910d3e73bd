// The umT5 tokenizer: SentencePiece (unigram) from the model's spiece.model, with Wan's
// prompt clean-up, EOS appended and the 512-token limit (wan-notes §2.1).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mg {

// Wan's clean-up (wan-notes §2.1), natively. ftfy.fix_text's relevant fixes: stray C1
// controls read as Windows-1252, full-width forms (U+FF01..U+FF5E, U+FF5F..U+FFEE symbols)
// and the ideographic space folded, curly quotes straightened, terminal escapes and control
// characters removed, and HTML references decoded while no line so far had a literal '<'
// (repeated until nothing changes); then HTML unescaped twice (Python's html.unescape
// rules, with a subset of the named references), whitespace runs collapsed, ends stripped.
// Not reproduced: ftfy's mojibake repair and NFC (SentencePiece's NFKC follows anyway).
std::string clean_prompt(const std::string& text);

class Tokenizer {
 public:
  // `path`: a spiece.model file, or a folder holding one (also tokenizer/ and
  // google/umt5-xxl/ below it). Throws mg::Error(BadWeights) when missing or unreadable and
  // mg::Error(Usage) when mogagen was built without SentencePiece.
  static Tokenizer open(const std::string& path);
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();
  // Cleaned, encoded, truncated to max_len - 1 pieces, then EOS (id 1).
  std::vector<int64_t> encode(const std::string& text, int max_len = 512) const;
  int vocab_size() const;
  const std::string& path() const { return path_; }

 private:
  Tokenizer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace mg
