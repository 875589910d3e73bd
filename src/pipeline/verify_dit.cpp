// verify dit / moga: the Wan DiT (dense, MoGA, per-shot captions) on golden cases, with the
// weights read through the engine's own loader (both namings where the set has them).
#include <filesystem>
#include <map>

#include "mogagen/checkpoint.h"
#include "mogagen/safetensors.h"
#include "models/wan_dit/wan_dit.h"
#include "pipeline/json_locate.h"
#include "pipeline/verify.h"

namespace fs = std::filesystem;

namespace mg {

std::string resolve_case_dir(const std::string& dir, const std::string& component) {
  std::error_code ec;
  if (fs::is_regular_file(fs::path(dir) / "case.safetensors", ec)) return dir;
  const fs::path sub = fs::path(dir) / component;
  if (fs::is_regular_file(sub / "case.safetensors", ec)) return sub.string();
  throw input_error("verify " + component + ": found neither " + dir +
                    "/case.safetensors nor " + sub.string() +
                    "/case.safetensors; give a golden set folder (e.g. golden/wan-a) or its " +
                    component + " folder (see docs/golden.md)");
}

namespace {

std::string need_file(const std::string& dir, const std::string& name) {
  const std::string p = (fs::path(dir) / name).string();
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) throw input_error("verify: missing file " + p);
  return p;
}

Tensor need_tensor(const TensorSource& src, const std::string& name) {
  if (!src.has(name))
    throw input_error(src.describe() + ": no tensor named '" + name + "' (see docs/golden.md)");
  return src.load_f32(name);
}

double scalar(const TensorSource& src, const std::string& name) {
  Tensor t = need_tensor(src, name);
  if (t.numel() != 1) throw input_error(src.describe() + ": '" + name + "' must hold one value");
  return double(t.f32()[0]);
}

const nlohmann::json& need_key(const nlohmann::json& j, const char* key, const std::string& where) {
  if (!j.is_object() || !j.contains(key)) throw input_error(where + ": missing '" + key + "'");
  return j[key];
}

}  // namespace

std::vector<VerifyLine> verify_dit(const std::string& dir_in, Ops& ops) {
  const std::string dir = resolve_case_dir(dir_in, "dit");
  const nlohmann::json cfg_json = parse_json_file(need_file(dir, "config.json")).value;
  const TensorSource cs = TensorSource::open(need_file(dir, "case.safetensors"));
  const Tensor x = need_tensor(cs, "x"), ctx = need_tensor(cs, "context");
  std::vector<double> ts;
  for (int i = 0; cs.has("t" + std::to_string(i)); ++i) ts.push_back(scalar(cs, "t" + std::to_string(i)));
  if (ts.empty()) throw input_error(cs.describe() + ": no timesteps t0, t1, ...");

  std::vector<std::pair<std::string, std::string>> namings;
  for (const auto& [tag, file] : {std::pair<std::string, std::string>{"wan", "weights_wan.safetensors"},
                                  {"diffusers", "weights_diffusers.safetensors"}}) {
    std::error_code ec;
    if (fs::is_regular_file(fs::path(dir) / file, ec)) namings.push_back({tag, file});
  }
  if (namings.empty())
    throw input_error("verify dit: " + dir +
                      " has neither weights_wan.safetensors nor weights_diffusers.safetensors");

  std::vector<VerifyLine> lines;
  const WanDitConfig cfg = WanDitConfig::from_json(cfg_json);
  for (const auto& [tag, file] : namings) {
    WeightMap map = WeightMap::open((fs::path(dir) / file).string(), Component::DiT);
    WanDit dit(cfg, map, ops);
    const auto text = dit.prepare_context({ctx});
    for (size_t i = 0; i < ts.size(); ++i) {
      const std::string out = "out_t" + std::to_string(i);
      const Tensor v = dit.forward(x, ts[i], text, {}, AttentionMode::Dense);
      lines.push_back({"dit[" + tag + "] " + out, rel_error(v, need_tensor(cs, out))});
      if (cs.has(out + "_diffusers"))
        lines.push_back({"dit[" + tag + "] " + out + " vs diffusers reference",
                         rel_error(v, cs.load_f32(out + "_diffusers"))});
    }
  }
  return lines;
}

std::vector<VerifyLine> verify_moga(const std::string& dir_in, Ops& ops) {
  const std::string dir = resolve_case_dir(dir_in, "moga");
  const std::string cfg_path = need_file(dir, "config.json");
  const nlohmann::json j = parse_json_file(cfg_path).value;
  const nlohmann::json& cases = need_key(j, "cases", cfg_path);
  if (!cases.is_object() || cases.empty())
    throw input_error(cfg_path + ": 'cases' must be a non-empty object");
  WanDitConfig cfg = WanDitConfig::from_json(need_key(j, "model", cfg_path));
  const TensorSource cs = TensorSource::open(need_file(dir, "case.safetensors"));
  const Tensor x = need_tensor(cs, "x");

  WeightMap map = WeightMap::open(need_file(dir, "weights_wan.safetensors"), Component::DiT);
  // The model's group count: the router weight's shape (a case's "groups" must agree).
  for (auto it = cases.begin(); it != cases.end(); ++it)
    if (it->is_object() && it->contains("groups") && (*it)["groups"].is_number_integer())
      cfg.moga.groups = (*it)["groups"].get<int>();
  WanDit dit(cfg, map, ops);

  std::vector<VerifyLine> lines;
  for (auto it = cases.begin(); it != cases.end(); ++it) {
    const std::string name = it.key();
    const nlohmann::json& c = it.value();
    const std::string where = cfg_path + ": cases." + name;
    AttentionMode mode = AttentionMode::Dense;
    if (!c.is_object()) throw input_error(where + ": expected an object");
    const std::string att =
        c.contains("attention") && c["attention"].is_string() ? c["attention"].get<std::string>()
                                                              : std::string("dense");
    if (att == "moga")
      mode = AttentionMode::Moga;
    else if (att != "dense")
      throw input_error(where + ": attention must be \"dense\" or \"moga\", found \"" + att + "\"");
    std::vector<int> shots;
    MogaConfig mc = dit.config().moga;
    int contexts = 1;
    try {
      if (c.contains("shots")) shots = c["shots"].get<std::vector<int>>();
      if (c.contains("windows")) {
        const auto w = c["windows"].get<std::vector<int>>();
        if (w.size() != 2) throw input_error(where + ": windows must hold two integers");
        mc.windows[0] = w[0];
        mc.windows[1] = w[1];
      }
      mc.temporal_group = c.value("temporal_group", mc.temporal_group);
      mc.kv_extend = c.value("kv_extend", mc.kv_extend);
      contexts = c.value("contexts", 1);
    } catch (const nlohmann::json::exception& e) {
      throw input_error(where + ": " + e.what());
    }
    dit.set_moga_options(mc);

    std::vector<Tensor> ctx;
    for (int s = 0; s < contexts; ++s) {
      const std::string n = "context" + std::to_string(s);
      ctx.push_back(contexts == 1 && !cs.has(n) ? need_tensor(cs, "context") : need_tensor(cs, n));
    }
    const auto text = dit.prepare_context(ctx);
    const Tensor v = dit.forward(x, scalar(cs, name + ".t"), text, shots, mode);
    lines.push_back({"moga " + name + " out", rel_error(v, need_tensor(cs, name + ".out"))});

    if (mode == AttentionMode::Moga && cs.has(name + ".layer0_gid")) {
      const Tensor ref_gid = cs.load_f32(name + ".layer0_gid");
      const MogaRouting& r = dit.layer0_routing();
      if (ref_gid.numel() != static_cast<int64_t>(r.gid.size()))
        throw input_error(cs.describe() + ": " + name + ".layer0_gid has " +
                          std::to_string(ref_gid.numel()) + " tokens, the model routed " +
                          std::to_string(r.gid.size()));
      int64_t mismatch = 0;
      for (int64_t i = 0; i < ref_gid.numel(); ++i)
        mismatch += static_cast<int64_t>(ref_gid.f32()[i]) != r.gid[i];
      lines.push_back({"moga " + name + " layer0_gid mismatch",
                       double(mismatch) / double(std::max<int64_t>(1, ref_gid.numel()))});
      if (cs.has(name + ".layer0_pwin")) {
        const Tensor pw = Tensor::from_vector(r.p_win, {static_cast<int64_t>(r.p_win.size())});
        lines.push_back({"moga " + name + " layer0_pwin", rel_error(pw, cs.load_f32(name + ".layer0_pwin"))});
      }
    }
  }
  return lines;
}

}  // namespace mg
