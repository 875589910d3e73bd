// Parses JSON text with nlohmann::json and keeps the line and column of every object key,
// so validation errors can point at the exact place in the user's file.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace mg {

struct JsonDoc {
  nlohmann::json value;
  std::string source;  // file name (or "<command line>") for messages
  // JSON pointer of a key ("/shots/1/promt") -> "line L, column C" of the key's opening quote
  std::map<std::string, std::string> key_pos;
  // "file: line L, column C" for a pointer; just "file" when unknown.
  std::string where(const std::string& pointer) const;
};

// Throws mg::Error(BadInput) "file: line L, column C: <parser message>" on bad JSON.
JsonDoc parse_json_text(const std::string& text, const std::string& source);
JsonDoc parse_json_file(const std::string& path);

}  // namespace mg
