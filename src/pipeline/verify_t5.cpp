// `mogagen verify t5`: encode the golden case's real tokens (attention_mask == 1) with the
// umT5 encoder and compare with the reference's last_hidden_state at those positions.
// Running on the real tokens alone equals the reference's masked run (wan-notes §2.5).
#include <cstring>
#include <filesystem>

#include "mogagen/checkpoint.h"
#include "models/umt5/umt5.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

namespace mg {

namespace {

namespace fs = std::filesystem;

std::string need_file(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) throw input_error("verify t5: missing file " + p.string());
  return p.string();
}

Tensor need(const TensorSource& cs, const std::string& name) {
  if (!cs.has(name))
    throw input_error(cs.describe() + ": no tensor '" + name + "' (see docs/golden.md)");
  return cs.load_f32(name);
}

// Integer tensor (int64 or int32, any shape with one non-unit dim) as a vector.
std::vector<int64_t> need_ints(const TensorSource& cs, const std::string& name) {
  if (!cs.has(name))
    throw input_error(cs.describe() + ": no tensor '" + name + "' (see docs/golden.md)");
  const Tensor t = cs.view(name);
  std::vector<int64_t> v(size_t(t.numel()));
  if (t.dtype() == DType::I64) {
    std::memcpy(v.data(), t.raw(), v.size() * sizeof(int64_t));
  } else if (t.dtype() == DType::I32) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = t.data<int32_t>()[i];
  } else {
    throw input_error(cs.describe() + ": '" + name + "' is " + t.str() +
                      ", expected an int64 (or int32) tensor");
  }
  return v;
}

}  // namespace

std::vector<VerifyLine> verify_t5(const std::string& dir_in, Ops& ops) {
  const fs::path dir = resolve_case_dir(dir_in, "t5");
  const UMT5Config cfg =
      UMT5Config::from_json(parse_json_file(need_file(dir / "config.json")).value);
  const WeightMap m = WeightMap::open(need_file(dir / "weights_hf.safetensors"), Component::T5);
  const TensorSource cs = TensorSource::open(need_file(dir / "case.safetensors"));

  const std::vector<int64_t> ids = need_ints(cs, "input_ids");
  const std::vector<int64_t> mask = need_ints(cs, "attention_mask");
  if (ids.size() != mask.size())
    throw input_error(cs.describe() + ": input_ids has " + std::to_string(ids.size()) +
                      " entries but attention_mask " + std::to_string(mask.size()));
  std::vector<int64_t> real, pos;
  for (size_t i = 0; i < ids.size(); ++i)
    if (mask[i] != 0) {
      real.push_back(ids[i]);
      pos.push_back(int64_t(i));
    }
  if (real.empty()) throw input_error(cs.describe() + ": attention_mask has no real token");

  const int64_t L = int64_t(ids.size()), d = cfg.d_model;
  const Tensor ref_all = need(cs, "last_hidden_state");
  if (ref_all.numel() != L * d)
    throw input_error(cs.describe() + ": last_hidden_state is " + ref_all.str() + ", expected [" +
                      std::to_string(L) + ", " + std::to_string(d) + "]");
  // The reference rows of the real tokens, wherever the mask puts them.
  Tensor ref = Tensor::empty({int64_t(pos.size()), d});
  for (size_t r = 0; r < pos.size(); ++r)
    std::memcpy(ref.f32() + int64_t(r) * d, ref_all.f32() + pos[r] * d, size_t(d) * sizeof(float));

  UMT5Encoder enc(cfg, m, ops);
  const Tensor out = enc.encode(real);
  return {{"t5[hf] last_hidden_state", rel_error(out, ref)}};
}

}  // namespace mg
