#include "io/tokenizer.h"

#include <filesystem>

#include "mogagen/error.h"

#ifdef MOGAGEN_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace fs = std::filesystem;

namespace mg {

namespace {

// Decodes one UTF-8 code point at s[i]; returns it and advances i (invalid bytes -> U+FFFD).
uint32_t next_cp(const std::string& s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    ++i;
    return 0xFFFD;
  }
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c >> 6) != 2) {
      ++i;
      return 0xFFFD;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  i += n;
  return cp;
}

void put_cp(std::string& o, uint32_t cp) {
  if (cp < 0x80) {
    o += char(cp);
  } else if (cp < 0x800) {
    o += char(0xC0 | (cp >> 6));
    o += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    o += char(0xE0 | (cp >> 12));
    o += char(0x80 | ((cp >> 6) & 0x3F));
    o += char(0x80 | (cp & 0x3F));
  } else {
    o += char(0xF0 | (cp >> 18));
    o += char(0x80 | ((cp >> 12) & 0x3F));
    o += char(0x80 | ((cp >> 6) & 0x3F));
    o += char(0x80 | (cp & 0x3F));
  }
}

std::string fold(const std::string& s) {
  std::string o;
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = next_cp(s, i);
    if (cp >= 0xFF01 && cp <= 0xFF5E) cp -= 0xFEE0;  // full-width ASCII forms
    else if (cp == 0x3000) cp = ' ';                  // ideographic space
    else if (cp == 0x2018 || cp == 0x2019 || cp == 0x201A || cp == 0x201B) cp = '\'';
    else if (cp == 0x201C || cp == 0x201D || cp == 0x201E || cp == 0x201F) cp = '"';
    if ((cp < 0x20 && cp != '\t' && cp != '\n' && cp != '\r') || cp == 0x7F ||
        (cp >= 0x80 && cp < 0xA0))
      continue;  // control characters
    put_cp(o, cp);
  }
  return o;
}

std::string html_unescape(const std::string& s) {
  static const std::pair<const char*, uint32_t> named[] = {
      {"amp", '&'}, {"lt", '<'}, {"gt", '>'}, {"quot", '"'}, {"apos", '\''}, {"nbsp", 0xA0}};
  std::string o;
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '&') {
      const size_t semi = s.find(';', i + 1);
      if (semi != std::string::npos && semi - i <= 10) {
        const std::string ent = s.substr(i + 1, semi - i - 1);
        uint32_t cp = 0;
        bool ok = false;
        if (!ent.empty() && ent[0] == '#') {
          try {
            size_t used = 0;
            const bool hex = ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X');
            const std::string digits = ent.substr(hex ? 2 : 1);
            cp = uint32_t(std::stoul(digits, &used, hex ? 16 : 10));
            ok = used == digits.size() && cp > 0 && cp < 0x110000;
          } catch (const std::exception&) {
          }
        } else {
          for (const auto& [n, c] : named)
            if (ent == n) {
              cp = c;
              ok = true;
            }
        }
        if (ok) {
          put_cp(o, cp);
          i = semi + 1;
          continue;
        }
      }
    }
    o += s[i++];
  }
  return o;
}

bool is_space_cp(uint32_t cp) {
  return cp == ' ' || cp == '\t' || cp == '\n' || cp == '\r' || cp == '\v' || cp == '\f' ||
         cp == 0xA0 || cp == 0x3000 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x1680 || cp == 0x85;
}

}  // namespace

std::string clean_prompt(const std::string& text) {
  std::string s = fold(html_unescape(html_unescape(fold(text))));
  std::string o;
  bool pending = false;
  for (size_t i = 0; i < s.size();) {
    const uint32_t cp = next_cp(s, i);
    if (is_space_cp(cp)) {
      pending = !o.empty();
      continue;
    }
    if (pending) o += ' ';
    pending = false;
    put_cp(o, cp);
  }
  return o;
}

#ifdef MOGAGEN_HAVE_SENTENCEPIECE
struct Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
};
#else
struct Tokenizer::Impl {};
#endif

Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::open(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    file.clear();
    for (const char* rel : {"spiece.model", "tokenizer/spiece.model", "google/umt5-xxl/spiece.model"})
      if (fs::exists(fs::path(path) / rel, ec)) {
        file = (fs::path(path) / rel).string();
        break;
      }
    if (file.empty())
      throw weights_error(path + ": no spiece.model (looked in ., tokenizer/ and google/umt5-xxl/)"
                          " (see README.md, section \"Getting Wan2.1 weights\")");
  }
  if (!fs::exists(file, ec))
    throw weights_error("tokenizer: '" + file + "' does not exist (see README.md, section "
                        "\"Getting Wan2.1 weights\")");
#ifdef MOGAGEN_HAVE_SENTENCEPIECE
  Tokenizer t;
  t.impl_ = std::make_unique<Impl>();
  t.path_ = file;
  const auto st = t.impl_->sp.Load(file);
  if (!st.ok()) throw weights_error(file + ": not a SentencePiece model: " + st.ToString());
  return t;
#else
  throw Error(ExitCode::Usage, "this mogagen was built without SentencePiece, so it cannot read " +
                                   file + "; install libsentencepiece-dev and rebuild");
#endif
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, int max_len) const {
  std::vector<int64_t> ids;
#ifdef MOGAGEN_HAVE_SENTENCEPIECE
  std::vector<int> pieces;
  const auto st = impl_->sp.Encode(clean_prompt(text), &pieces);
  if (!st.ok()) throw input_error("tokenizer: cannot encode the prompt: " + st.ToString());
  const size_t keep = std::min<size_t>(pieces.size(), size_t(std::max(0, max_len - 1)));
  ids.assign(pieces.begin(), pieces.begin() + keep);
#endif
  ids.push_back(1);  // </s>
  return ids;
}

int Tokenizer::vocab_size() const {
#ifdef MOGAGEN_HAVE_SENTENCEPIECE
  return impl_->sp.GetPieceSize();
#else
  return 0;
#endif
}

}  // namespace mg
