#include <filesystem>

#include "mogagen/checkpoint.h"
#include "models/umt5/umt5.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

namespace mg {

std::vector<VerifyLine> verify_t5(const std::string& dir_in, Ops& ops) {
  const std::string dir = resolve_case_dir(dir_in, "t5");
  const UMT5Config cfg = UMT5Config::from_json(parse_json_file(dir + "/config.json").value);
  WeightMap m = WeightMap::open(dir + "/weights_hf.safetensors", Component::T5);
  UMT5Encoder enc(cfg, m, ops);
  TensorSource cs = TensorSource::open(dir + "/case.safetensors");
  Tensor ids = cs.view("input_ids"), mask = cs.view("attention_mask");
  std::vector<int64_t> real;
  for (int64_t i = 0; i < ids.numel(); ++i)
    if (mask.data<int64_t>()[i]) real.push_back(ids.data<int64_t>()[i]);
  Tensor out = enc.encode(real);
  Tensor ref = cs.load_f32("last_hidden_state").rows(0, int64_t(real.size()));
  return {{"t5[hf] last_hidden_state (" + std::to_string(real.size()) + " tokens)", rel_error(out, ref.clone())}};
}

}  // namespace mg
