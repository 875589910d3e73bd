// The umT5 tokenizer: SentencePiece (unigram) from the model's spiece.model, with Wan's
// prompt clean-up, EOS appended and the 512-token limit (wan-notes §2.1).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace mg {

// Wan's clean-up, natively: full-width ASCII forms (U+FF01..U+FF5E) and the ideographic
// space folded to ASCII, curly quotes straightened, control characters removed, HTML
// entities unescaped twice, whitespace runs collapsed, ends stripped.
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
