#include "io/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <cstring>
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

// Windows-1252 meaning of the C1 range U+0080..U+009F (undefined bytes keep their code
// point). ftfy reads stray C1 controls this way, and so do HTML numeric references.
uint32_t cp1252_c1(uint32_t cp) {
  static const uint16_t map[32] = {
      0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
      0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
      0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178};
  return map[cp - 0x80];
}

// Half- and full-width forms outside the ASCII block (U+FF5F..U+FFEE) with their NFKC
// standard-width form; 0 = none. Katakana and Hangul half-width forms are left to the
// SentencePiece model's own NFKC normaliser.
uint32_t width_fold_symbol(uint32_t cp) {
  switch (cp) {
    case 0xFF5F: return 0x2985;
    case 0xFF60: return 0x2986;
    case 0xFFE0: return 0x00A2;
    case 0xFFE1: return 0x00A3;
    case 0xFFE2: return 0x00AC;
    case 0xFFE3: return 0x00AF;
    case 0xFFE4: return 0x00A6;
    case 0xFFE5: return 0x00A5;
    case 0xFFE6: return 0x20A9;
    case 0xFFE8: return 0x2502;
    case 0xFFE9: return 0x2190;
    case 0xFFEA: return 0x2191;
    case 0xFFEB: return 0x2192;
    case 0xFFEC: return 0x2193;
    case 0xFFED: return 0x25A0;
    case 0xFFEE: return 0x25CB;
    default: return 0;
  }
}

// ftfy's character fixes, one pass, in its order: C1 controls as Windows-1252, width
// folding, straight quotes, terminal escapes and unwanted control characters removed.
// (Mojibake repair and NFC are not reproduced; SentencePiece applies NFKC afterwards.)
std::string fix_chars(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    // ANSI terminal escapes: ESC [ (digits | ;)* letter
    if (s[i] == '\x1b' && i + 1 < s.size() && s[i + 1] == '[') {
      size_t j = i + 2;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == ';')) ++j;
      if (j < s.size() && std::isalpha(static_cast<unsigned char>(s[j]))) {
        i = j + 1;
        continue;
      }
    }
    uint32_t cp = next_cp(s, i);
    if (cp >= 0x80 && cp <= 0x9F) cp = cp1252_c1(cp);
    if (cp >= 0xFF01 && cp <= 0xFF5E) {
      cp -= 0xFEE0;  // full-width ASCII forms ("，" -> ",")
    } else if (cp == 0x3000) {
      cp = ' ';  // ideographic space
    } else if (const uint32_t w = width_fold_symbol(cp)) {
      cp = w;
    }
    if (cp == 0x02BC || (cp >= 0x2018 && cp <= 0x201B)) cp = '\'';
    else if (cp >= 0x201C && cp <= 0x201F) cp = '"';
    const bool control = cp <= 0x08 || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || cp == 0x7F ||
                         (cp >= 0x206A && cp <= 0x206F) || cp == 0xFEFF ||
                         (cp >= 0xFFF9 && cp <= 0xFFFC);
    if (!control) put_cp(o, cp);  // tab, newline, form feed and CR stay (whitespace)
  }
  return o;
}

// Named character references understood here (a subset of HTML5's): name, code point, and
// whether the name is also recognised without its semicolon (HTML's legacy names).
struct Entity {
  const char* name;
  uint32_t cp;
  bool legacy;
};
const Entity kEntities[] = {
    {"amp", '&', true},      {"lt", '<', true},        {"gt", '>', true},
    {"quot", '"', true},     {"apos", '\'', false},    {"nbsp", 0xA0, true},
    {"AMP", '&', true},      {"LT", '<', true},        {"GT", '>', true},
    {"QUOT", '"', true},     {"COPY", 0xA9, true},     {"REG", 0xAE, true},
    {"copy", 0xA9, true},    {"reg", 0xAE, true},      {"trade", 0x2122, false},
    {"TRADE", 0x2122, false}, {"hellip", 0x2026, false}, {"mldr", 0x2026, false},
    {"mdash", 0x2014, false}, {"ndash", 0x2013, false}, {"lsquo", 0x2018, false},
    {"rsquo", 0x2019, false}, {"sbquo", 0x201A, false}, {"ldquo", 0x201C, false},
    {"rdquo", 0x201D, false}, {"bdquo", 0x201E, false}, {"laquo", 0xAB, true},
    {"raquo", 0xBB, true},   {"lsaquo", 0x2039, false}, {"rsaquo", 0x203A, false},
    {"bull", 0x2022, false}, {"middot", 0xB7, true},   {"deg", 0xB0, true},
    {"times", 0xD7, true},   {"divide", 0xF7, true},   {"plusmn", 0xB1, true},
    {"minus", 0x2212, false}, {"para", 0xB6, true},    {"sect", 0xA7, true},
    {"cent", 0xA2, true},    {"pound", 0xA3, true},    {"yen", 0xA5, true},
    {"euro", 0x20AC, false}, {"curren", 0xA4, true},   {"iexcl", 0xA1, true},
    {"iquest", 0xBF, true},  {"frac12", 0xBD, true},   {"frac14", 0xBC, true},
    {"frac34", 0xBE, true},  {"sup1", 0xB9, true},     {"sup2", 0xB2, true},
    {"sup3", 0xB3, true},    {"shy", 0xAD, true},      {"not", 0xAC, true},
    {"dagger", 0x2020, false}, {"Dagger", 0x2021, false}, {"permil", 0x2030, false},
    {"prime", 0x2032, false}, {"Prime", 0x2033, false}, {"larr", 0x2190, false},
    {"rarr", 0x2192, false}, {"uarr", 0x2191, false},  {"darr", 0x2193, false},
    {"harr", 0x2194, false}, {"hearts", 0x2665, false}, {"star", 0x2606, false},
    {"starf", 0x2605, false}, {"check", 0x2713, false}, {"ensp", 0x2002, false},
    {"emsp", 0x2003, false}, {"thinsp", 0x2009, false}, {"zwj", 0x200D, false},
    {"zwnj", 0x200C, false}, {"Tab", '\t', false},     {"NewLine", '\n', false},
    {"colon", ':', false},   {"comma", ',', false},    {"period", '.', false},
    {"excl", '!', false},    {"quest", '?', false},    {"num", '#', false},
    {"dollar", '$', false},  {"percnt", '%', false},   {"lpar", '(', false},
    {"rpar", ')', false},    {"ast", '*', false},      {"plus", '+', false},
    {"sol", '/', false},     {"semi", ';', false},     {"equals", '=', false},
    {"commat", '@', false},  {"lsqb", '[', false},     {"rsqb", ']', false},
    {"bsol", '\\', false},   {"lowbar", '_', false},   {"grave", '`', false},
    {"lcub", '{', false},    {"rcub", '}', false},     {"verbar", '|', false},
    {"Hat", '^', false},     {"agrave", 0xE0, true},   {"aacute", 0xE1, true},
    {"acirc", 0xE2, true},   {"auml", 0xE4, true},     {"ccedil", 0xE7, true},
    {"egrave", 0xE8, true},  {"eacute", 0xE9, true},   {"ecirc", 0xEA, true},
    {"iacute", 0xED, true},  {"ntilde", 0xF1, true},   {"oacute", 0xF3, true},
    {"ouml", 0xF6, true},    {"uacute", 0xFA, true},   {"uuml", 0xFC, true},
    {"Eacute", 0xC9, true},  {"Ntilde", 0xD1, true},   {"Ouml", 0xD6, true},
    {"Uuml", 0xDC, true},    {"Auml", 0xC4, true},
};

const Entity* find_entity(const std::string& name) {
  for (const Entity& e : kEntities)
    if (name == e.name) return &e;
  return nullptr;
}

bool is_noncharacter(uint32_t cp) { return (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE; }

// What an HTML numeric reference &#N; stands for (Python's html.unescape rules): C1 numbers
// read as Windows-1252, NUL / surrogates / out of range -> U+FFFD, control characters and
// non-characters -> nothing (returns false).
bool numeric_ref(uint64_t num, bool overflow, uint32_t& cp) {
  if (overflow || num > 0x10FFFF || (num >= 0xD800 && num <= 0xDFFF) || num == 0) {
    cp = 0xFFFD;
    return true;
  }
  cp = uint32_t(num);
  if (cp == 0x0D) return true;
  if (cp >= 0x80 && cp <= 0x9F) {
    cp = cp1252_c1(cp);
    return true;
  }
  if ((cp >= 0x01 && cp <= 0x08) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || cp == 0x7F ||
      is_noncharacter(cp))
    return false;
  return true;
}

// Parses digits of base 10 or 16 at s[i...]; returns the count (0: none).
size_t parse_num(const std::string& s, size_t i, bool hex, uint64_t& num, bool& overflow) {
  num = 0;
  overflow = false;
  size_t n = 0;
  for (; i + n < s.size(); ++n) {
    const char c = s[i + n];
    int d = -1;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (hex && c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (hex && c >= 'A' && c <= 'F') d = c - 'A' + 10;
    if (d < 0) break;
    num = num * (hex ? 16 : 10) + uint64_t(d);
    if (num > 0x10FFFF) {
      overflow = true;
      num = 0x110000;
    }
  }
  return n;
}

bool is_alnum(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Python's html.unescape (one pass): &name; &#N; &#xH; (numeric with or without the
// semicolon), legacy names also without it ("&amp" -> "&"; longest such prefix wins).
std::string html_unescape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] != '&') {
      o += s[i++];
      continue;
    }
    if (i + 1 < s.size() && s[i + 1] == '#') {
      const bool hex = i + 2 < s.size() && (s[i + 2] == 'x' || s[i + 2] == 'X');
      const size_t start = i + (hex ? 3 : 2);
      uint64_t num = 0;
      bool overflow = false;
      const size_t n = parse_num(s, start, hex, num, overflow);
      if (n == 0) {
        o += s[i++];
        continue;
      }
      size_t end = start + n;
      if (end < s.size() && s[end] == ';') ++end;
      uint32_t cp = 0;
      if (numeric_ref(num, overflow, cp)) put_cp(o, cp);
      i = end;
      continue;
    }
    // named: up to 32 characters that are not \t \n \f space < & # ;
    size_t j = i + 1;
    while (j < s.size() && j - i - 1 < 32 && !std::strchr("\t\n\f <&#;", s[j])) ++j;
    const std::string name = s.substr(i + 1, j - i - 1);
    if (name.empty()) {
      o += s[i++];
      continue;
    }
    if (j < s.size() && s[j] == ';') {
      if (const Entity* e = find_entity(name)) {
        put_cp(o, e->cp);
        i = j + 1;
        continue;
      }
    }
    bool done = false;
    for (size_t len = name.size(); len >= 1 && !done; --len) {  // legacy, no semicolon
      const Entity* e = find_entity(name.substr(0, len));
      if (e && e->legacy) {
        put_cp(o, e->cp);
        i = i + 1 + len;
        done = true;
      }
    }
    if (!done) o += s[i++];
  }
  return o;
}

uint32_t upper_latin1(uint32_t cp) {
  if (cp == 0xB5) return 0x39C;  // micro sign -> Greek capital mu, as str.upper()
  if (cp >= 0xE0 && cp <= 0xFE && cp != 0xF7) return cp - 0x20;
  return cp;
}

// ftfy's own HTML step: only complete references "&[#]<1-24 alphanumerics>;", names with
// their semicolon, and the all-capitals spelling of a lower-case name ("&EACUTE;" -> "É").
std::string ftfy_unescape(const std::string& s) {
  std::string o;
  o.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '&') {
      size_t j = i + 1;
      const bool numeric = j < s.size() && s[j] == '#';
      if (numeric) ++j;
      const size_t start = j;
      while (j < s.size() && j - start < 24 && is_alnum(s[j])) ++j;
      if (j > start && j < s.size() && s[j] == ';') {
        const std::string body = s.substr(start, j - start);
        bool ok = false;
        uint32_t cp = 0;
        bool emit = true;
        if (numeric) {
          const bool hex = body[0] == 'x' || body[0] == 'X';
          uint64_t num = 0;
          bool overflow = false;
          const size_t n = parse_num(body, hex ? 1 : 0, hex, num, overflow);
          if (n > 0 && n == body.size() - (hex ? 1 : 0)) {
            emit = numeric_ref(num, overflow, cp);
            ok = !(emit && cp == ';');  // ftfy keeps a reference that decodes to ';'
          }
        } else if (const Entity* e = find_entity(body)) {
          ok = true;
          cp = e->cp;
        } else {
          std::string lower = body;
          bool all_upper = true;
          for (char& c : lower) {
            if (c >= 'a' && c <= 'z') all_upper = false;
            if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
          }
          const Entity* lc = all_upper ? find_entity(lower) : nullptr;
          if (lc) {
            ok = true;
            cp = upper_latin1(lc->cp);
          }
        }
        if (ok) {
          if (emit) put_cp(o, cp);
          i = j + 1;
          continue;
        }
      }
    }
    o += s[i++];
  }
  return o;
}

// ftfy.fix_text with its default settings, as far as it matters before SentencePiece:
// line by line, HTML references decoded only while no line so far had a literal '<', and
// every fix repeated until the text stops changing.
std::string ftfy_fix_text(const std::string& text) {
  std::string out;
  bool unescape = true;
  for (size_t pos = 0; pos < text.size();) {
    size_t brk = text.find('\n', pos);
    brk = brk == std::string::npos ? text.size() : brk + 1;
    std::string seg = text.substr(pos, brk - pos);
    pos = brk;
    if (unescape && seg.find('<') != std::string::npos) unescape = false;
    for (int it = 0; it < 64; ++it) {
      std::string next = fix_chars(unescape ? ftfy_unescape(seg) : seg);
      if (next == seg) break;
      seg = std::move(next);
    }
    out += seg;
  }
  return out;
}

// Python's str.isspace(), which is what Wan's `\s+` and strip() use.
bool is_space_cp(uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 ||
         cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
         cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

}  // namespace

std::string clean_prompt(const std::string& text) {
  // Wan: ftfy.fix_text, html.unescape twice, strip, whitespace runs -> " ", strip.
  const std::string s = html_unescape(html_unescape(ftfy_fix_text(text)));
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
