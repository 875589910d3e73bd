#include "pipeline/json_locate.h"

#include <fstream>
#include <sstream>

#include "mogagen/error.h"

namespace mg {
namespace {

// A scanner over already-valid JSON text that records where each key starts.
struct Scanner {
  const std::string& s;
  size_t i = 0;
  std::map<std::string, std::string>& out;

  std::string pos_of(size_t p) const {
    int line = 1, col = 1;
    for (size_t k = 0; k < p && k < s.size(); ++k) {
      if (s[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    return "line " + std::to_string(line) + ", column " + std::to_string(col);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  std::string str() {  // at '"'; returns the decoded-enough key (escapes kept verbatim)
    std::string r;
    ++i;
    while (i < s.size() && s[i] != '"') {
      if (s[i] == '\\' && i + 1 < s.size()) {
        r += s[i + 1];
        i += 2;
        continue;
      }
      r += s[i++];
    }
    ++i;
    return r;
  }
  static std::string escape_ptr(const std::string& k) {
    std::string r;
    for (char c : k) {
      if (c == '~')
        r += "~0";
      else if (c == '/')
        r += "~1";
      else
        r += c;
    }
    return r;
  }
  void value(const std::string& ptr) {
    ws();
    if (i >= s.size()) return;
    if (s[i] == '{') {
      ++i;
      ws();
      if (i < s.size() && s[i] == '}') {
        ++i;
        return;
      }
      while (i < s.size()) {
        ws();
        const size_t kp = i;
        const std::string key = str();
        const std::string child = ptr + "/" + escape_ptr(key);
        out[child] = pos_of(kp);
        ws();
        ++i;  // ':'
        value(child);
        ws();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        ++i;  // '}'
        break;
      }
    } else if (s[i] == '[') {
      ++i;
      ws();
      if (i < s.size() && s[i] == ']') {
        ++i;
        return;
      }
      for (int idx = 0; i < s.size(); ++idx) {
        value(ptr + "/" + std::to_string(idx));
        ws();
        if (i < s.size() && s[i] == ',') {
          ++i;
          continue;
        }
        ++i;  // ']'
        break;
      }
    } else if (s[i] == '"') {
      str();
    } else {
      while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
             s[i] != '\n' && s[i] != '\r' && s[i] != '\t')
        ++i;
    }
  }
};

}  // namespace

std::string JsonDoc::where(const std::string& pointer) const {
  auto it = key_pos.find(pointer);
  return it == key_pos.end() ? source : source + ": " + it->second;
}

JsonDoc parse_json_text(const std::string& text, const std::string& source) {
  JsonDoc d;
  d.source = source;
  try {
    d.value = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte is 1-based; translate to line/column.
    int line = 1, col = 1;
    for (size_t k = 0; k + 1 < e.byte && k < text.size(); ++k) {
      if (text[k] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string msg = e.what();
    const auto p = msg.find("parse error");
    throw input_error(source + ": line " + std::to_string(line) + ", column " +
                      std::to_string(col) + ": invalid JSON (" +
                      (p == std::string::npos ? msg : msg.substr(p)) + ")");
  }
  Scanner sc{text, 0, d.key_pos};
  sc.value("");
  return d;
}

JsonDoc parse_json_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw input_error(path + ": cannot open file for reading");
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_json_text(ss.str(), path);
}

}  // namespace mg
