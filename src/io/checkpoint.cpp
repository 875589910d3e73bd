#include "mogagen/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <regex>
#include <set>

namespace fs = std::filesystem;

namespace mg {

const char* layout_name(Layout l) {
  switch (l) {
    case Layout::WanOriginal: return "original Wan2.1 names";
    case Layout::Diffusers: return "diffusers names";
    case Layout::HuggingFace: return "Hugging Face names";
  }
  return "?";
}

const char* component_name(Component c) {
  switch (c) {
    case Component::DiT: return "DiT";
    case Component::VAE: return "VAE";
    case Component::T5: return "umT5 text encoder";
  }
  return "?";
}

namespace {

const char* kHelp = " (see README.md, section \"Getting Wan2.1 weights\")";

bool starts_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(0, p.size(), p) == 0;
}

// Wrapper prefixes used by ComfyUI single files and other packagings.
std::string strip_prefix(const std::string& n, Component c) {
  static const std::vector<std::string> dit = {"model.diffusion_model.", "diffusion_model.",
                                               "model."};
  static const std::vector<std::string> vae = {"first_stage_model.", "vae."};
  static const std::vector<std::string> t5 = {"text_encoders.umt5xxl.transformer.",
                                              "text_encoder.", "umt5xxl.transformer."};
  for (const auto& p : c == Component::DiT ? dit : c == Component::VAE ? vae : t5)
    if (starts_with(n, p)) return n.substr(p.size());
  return n;
}

// ---- DiT: diffusers -> original -----------------------------------------------------------
std::string dit_from_diffusers(const std::string& n) {
  static const std::vector<std::pair<std::regex, std::string>> rules = [] {
    std::vector<std::pair<std::string, std::string>> r = {
        {R"(^condition_embedder\.text_embedder\.linear_1\.(.*)$)", "text_embedding.0.$1"},
        {R"(^condition_embedder\.text_embedder\.linear_2\.(.*)$)", "text_embedding.2.$1"},
        {R"(^condition_embedder\.time_embedder\.linear_1\.(.*)$)", "time_embedding.0.$1"},
        {R"(^condition_embedder\.time_embedder\.linear_2\.(.*)$)", "time_embedding.2.$1"},
        {R"(^condition_embedder\.time_proj\.(.*)$)", "time_projection.1.$1"},
        {R"(^blocks\.(\d+)\.scale_shift_table$)", "blocks.$1.modulation"},
        {R"(^blocks\.(\d+)\.attn1\.to_q\.(.*)$)", "blocks.$1.self_attn.q.$2"},
        {R"(^blocks\.(\d+)\.attn1\.to_k\.(.*)$)", "blocks.$1.self_attn.k.$2"},
        {R"(^blocks\.(\d+)\.attn1\.to_v\.(.*)$)", "blocks.$1.self_attn.v.$2"},
        {R"(^blocks\.(\d+)\.attn1\.to_out\.0\.(.*)$)", "blocks.$1.self_attn.o.$2"},
        {R"(^blocks\.(\d+)\.attn1\.norm_q\.(.*)$)", "blocks.$1.self_attn.norm_q.$2"},
        {R"(^blocks\.(\d+)\.attn1\.norm_k\.(.*)$)", "blocks.$1.self_attn.norm_k.$2"},
        {R"(^blocks\.(\d+)\.attn1\.router\.(.*)$)", "blocks.$1.self_attn.router.$2"},
        {R"(^blocks\.(\d+)\.attn2\.to_q\.(.*)$)", "blocks.$1.cross_attn.q.$2"},
        {R"(^blocks\.(\d+)\.attn2\.to_k\.(.*)$)", "blocks.$1.cross_attn.k.$2"},
        {R"(^blocks\.(\d+)\.attn2\.to_v\.(.*)$)", "blocks.$1.cross_attn.v.$2"},
        {R"(^blocks\.(\d+)\.attn2\.to_out\.0\.(.*)$)", "blocks.$1.cross_attn.o.$2"},
        {R"(^blocks\.(\d+)\.attn2\.norm_q\.(.*)$)", "blocks.$1.cross_attn.norm_q.$2"},
        {R"(^blocks\.(\d+)\.attn2\.norm_k\.(.*)$)", "blocks.$1.cross_attn.norm_k.$2"},
        {R"(^blocks\.(\d+)\.norm2\.(.*)$)", "blocks.$1.norm3.$2"},  // diffusers swaps norm2/3
        {R"(^blocks\.(\d+)\.ffn\.net\.0\.proj\.(.*)$)", "blocks.$1.ffn.0.$2"},
        {R"(^blocks\.(\d+)\.ffn\.net\.2\.(.*)$)", "blocks.$1.ffn.2.$2"},
        {R"(^proj_out\.(.*)$)", "head.head.$1"},
        {R"(^scale_shift_table$)", "head.modulation"},
        {R"(^patch_embedding\.(.*)$)", "patch_embedding.$1"},
    };
    std::vector<std::pair<std::regex, std::string>> out;
    for (auto& [a, b] : r) out.emplace_back(std::regex(a), b);
    return out;
  }();
  for (const auto& [re, rep] : rules)
    if (std::regex_match(n, re)) return std::regex_replace(n, re, rep);
  return "";
}

// ---- VAE: diffusers -> original -----------------------------------------------------------
std::string vae_resblock_inner(const std::string& s) {
  // s is the part after the block prefix
  static const std::vector<std::pair<std::string, std::string>> m = {
      {"norm1.gamma", "residual.0.gamma"}, {"conv1.", "residual.2."},
      {"norm2.gamma", "residual.3.gamma"}, {"conv2.", "residual.6."},
      {"conv_shortcut.", "shortcut."}};
  for (const auto& [a, b] : m)
    if (starts_with(s, a)) return b + s.substr(a.size());
  return "";
}

// resnets: residual blocks per decoder up block (num_res_blocks + 1); the original names
// number the decoder's up path flat: each up block's resnets, then its upsampler.
std::string vae_from_diffusers(const std::string& n, int resnets = 3) {
  std::smatch mm;
  if (starts_with(n, "quant_conv.")) return "conv1." + n.substr(11);
  if (starts_with(n, "post_quant_conv.")) return "conv2." + n.substr(16);
  for (const std::string side : {"encoder", "decoder"}) {
    const std::string p = side + ".";
    if (!starts_with(n, p)) continue;
    const std::string r = n.substr(p.size());
    if (starts_with(r, "conv_in.")) return p + "conv1." + r.substr(8);
    if (starts_with(r, "conv_out.")) return p + "head.2." + r.substr(9);
    if (starts_with(r, "norm_out.")) return p + "head.0." + r.substr(9);
    static const std::regex mid_res(R"(^mid_block\.resnets\.(\d+)\.(.*)$)");
    static const std::regex mid_attn(R"(^mid_block\.attentions\.0\.(.*)$)");
    if (std::regex_match(r, mm, mid_res)) {
      const int i = std::stoi(mm[1]);
      const std::string in = vae_resblock_inner(mm[2]);
      return in.empty() ? "" : p + "middle." + std::to_string(i == 0 ? 0 : 2) + "." + in;
    }
    if (std::regex_match(r, mm, mid_attn)) return p + "middle.1." + std::string(mm[1]);
    if (side == "encoder") {
      static const std::regex down(R"(^down_blocks\.(\d+)\.(.*)$)");
      if (std::regex_match(r, mm, down)) {
        const std::string rest = mm[2];
        const std::string in = vae_resblock_inner(rest);
        return p + "downsamples." + std::string(mm[1]) + "." + (in.empty() ? rest : in);
      }
    } else {
      static const std::regex up_res(R"(^up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$)");
      static const std::regex up_smp(R"(^up_blocks\.(\d+)\.upsamplers\.0\.(.*)$)");
      if (std::regex_match(r, mm, up_res)) {
        const int b = std::stoi(mm[1]), j = std::stoi(mm[2]);
        const std::string in = vae_resblock_inner(mm[3]);
        return in.empty() ? "" : p + "upsamples." + std::to_string(b * (resnets + 1) + j) + "." + in;
      }
      if (std::regex_match(r, mm, up_smp)) {
        const int b = std::stoi(mm[1]);
        return p + "upsamples." + std::to_string(b * (resnets + 1) + resnets) + "." + std::string(mm[2]);
      }
    }
  }
  return "";
}

// ---- umT5: Wan names -> HF ------------------------------------------------------------------
std::string t5_from_wan(const std::string& n) {
  std::smatch mm;
  if (n == "token_embedding.weight") return "shared.weight";
  if (n == "norm.weight") return "encoder.final_layer_norm.weight";
  static const std::regex blk(R"(^blocks\.(\d+)\.(.*)$)");
  if (!std::regex_match(n, mm, blk)) return "";
  const std::string b = "encoder.block." + std::string(mm[1]) + ".";
  const std::string r = mm[2];
  static const std::vector<std::pair<std::string, std::string>> m = {
      {"norm1.weight", "layer.0.layer_norm.weight"},
      {"attn.q.weight", "layer.0.SelfAttention.q.weight"},
      {"attn.k.weight", "layer.0.SelfAttention.k.weight"},
      {"attn.v.weight", "layer.0.SelfAttention.v.weight"},
      {"attn.o.weight", "layer.0.SelfAttention.o.weight"},
      {"pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"},
      {"norm2.weight", "layer.1.layer_norm.weight"},
      {"ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"},
      {"ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"},
      {"ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"}};
  for (const auto& [a, c] : m)
    if (r == a) return b + c;
  return "";
}

bool is_hf_t5_name(const std::string& n) {
  return n == "shared.weight" || n == "encoder.embed_tokens.weight" ||
         n == "encoder.final_layer_norm.weight" || starts_with(n, "encoder.block.");
}

}  // namespace

Layout detect_layout(const std::vector<std::string>& names_in, Component comp) {
  std::vector<std::string> names;
  for (const auto& n : names_in) names.push_back(strip_prefix(n, comp));
  auto any = [&](auto pred) { return std::any_of(names.begin(), names.end(), pred); };
  switch (comp) {
    case Component::DiT:
      if (any([](const std::string& n) {
            return starts_with(n, "condition_embedder.") || n.find(".attn1.") != std::string::npos ||
                   starts_with(n, "proj_out.");
          }))
        return Layout::Diffusers;
      if (any([](const std::string& n) {
            return starts_with(n, "text_embedding.") || n.find(".self_attn.") != std::string::npos ||
                   starts_with(n, "head.");
          }))
        return Layout::WanOriginal;
      break;
    case Component::VAE:
      if (any([](const std::string& n) {
            return n.find("up_blocks.") != std::string::npos || starts_with(n, "post_quant_conv.") ||
                   n.find(".conv_in.") != std::string::npos;
          }))
        return Layout::Diffusers;
      if (any([](const std::string& n) {
            return n.find("decoder.upsamples.") != std::string::npos || starts_with(n, "conv2.") ||
                   n.find("decoder.conv1.") != std::string::npos;
          }))
        return Layout::WanOriginal;
      break;
    case Component::T5:
      if (any([](const std::string& n) { return is_hf_t5_name(n); })) return Layout::HuggingFace;
      if (any([](const std::string& n) {
            return n == "token_embedding.weight" || n.find(".attn.q.weight") != std::string::npos;
          }))
        return Layout::WanOriginal;
      break;
  }
  std::string sample;
  for (size_t i = 0; i < names_in.size() && i < 5; ++i) sample += (i ? ", " : "") + names_in[i];
  throw weights_error(std::string("cannot tell the checkpoint layout of the ") +
                      component_name(comp) + " from its tensor names (" +
                      std::to_string(names_in.size()) + " tensors, e.g. " +
                      (sample.empty() ? "none" : sample) + ")" + kHelp);
}

std::string to_canonical(const std::string& file_name, Layout l, Component comp) {
  const std::string n = strip_prefix(file_name, comp);
  switch (comp) {
    case Component::DiT: return l == Layout::Diffusers ? dit_from_diffusers(n) : n;
    case Component::VAE: return l == Layout::Diffusers ? vae_from_diffusers(n) : n;
    case Component::T5:
      if (l == Layout::WanOriginal) return t5_from_wan(n);
      if (n == "encoder.embed_tokens.weight") return "shared.weight";
      return is_hf_t5_name(n) ? n : "";
  }
  return "";
}

// ---- finding the files of a component inside a folder ---------------------------------------
namespace {

std::vector<std::string> list_safetensors(const fs::path& dir) {
  std::vector<std::string> r;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") r.push_back(e.path().string());
  std::sort(r.begin(), r.end());
  return r;
}

std::string find_index(const fs::path& dir) {
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.size() > 24 && f.compare(f.size() - 23, 23, ".safetensors.index.json") == 0)
      return e.path().string();
  }
  return "";
}

bool name_has(const std::string& path, std::initializer_list<const char*> keys) {
  std::string f = fs::path(path).filename().string();
  std::transform(f.begin(), f.end(), f.begin(), ::tolower);
  for (const char* k : keys)
    if (f.find(k) != std::string::npos) return true;
  return false;
}

std::string folder_listing(const fs::path& dir) {
  std::string s;
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (n++ == 12) {
      s += ", ...";
      break;
    }
    s += (s.empty() ? "" : ", ") + e.path().filename().string() + (e.is_directory() ? "/" : "");
  }
  return s.empty() ? "(empty)" : s;
}

TensorSource open_in_folder(const fs::path& dir, Component comp) {
  std::error_code ec;
  // A diffusers root: use its component folder.
  if (fs::exists(dir / "model_index.json", ec)) {
    const char* sub = comp == Component::DiT ? "transformer" : comp == Component::VAE ? "vae" : "text_encoder";
    if (!fs::is_directory(dir / sub, ec))
      throw weights_error(dir.string() + ": a diffusers folder (model_index.json) without " + sub +
                          "/ for the " + component_name(comp) + kHelp);
    return open_in_folder(dir / sub, comp);
  }
  const std::string idx = find_index(dir);
  const auto files = list_safetensors(dir);
  std::vector<std::string> pick;
  for (const auto& f : files) {
    const bool vae = name_has(f, {"vae"});
    const bool t5 = name_has(f, {"t5", "text_encoder", "umt5"});
    if (comp == Component::VAE && vae) pick.push_back(f);
    if (comp == Component::T5 && t5 && !vae) pick.push_back(f);
    if (comp == Component::DiT && !vae && !t5) pick.push_back(f);
  }
  if (comp == Component::DiT && !idx.empty() && !name_has(idx, {"vae", "t5"}))
    return TensorSource::open(idx);
  if (comp == Component::T5 && pick.empty() && !idx.empty()) return TensorSource::open(idx);
  if (pick.empty()) {
    // A component folder of its own (transformer/, vae/, text_encoder/): all its files.
    const std::string base = dir.filename().string();
    if ((comp == Component::DiT && base == "transformer") || (comp == Component::VAE && base == "vae") ||
        (comp == Component::T5 && base == "text_encoder")) {
      if (!idx.empty()) return TensorSource::open(idx);
      pick = files;
    }
  }
  if (pick.empty())
    throw weights_error(dir.string() + ": found no " + component_name(comp) +
                        " weights (looked for " +
                        (comp == Component::DiT ? "diffusion_pytorch_model*.safetensors or a .safetensors.index.json"
                         : comp == Component::VAE ? "a *vae*.safetensors file or vae/"
                                                  : "a *t5*/*umt5*.safetensors file or text_encoder/") +
                        "); the folder holds: " + folder_listing(dir) + kHelp);
  return TensorSource::open_files(pick);
}

}  // namespace

WeightMap WeightMap::open(const std::string& path, Component comp) {
  std::error_code ec;
  if (!fs::exists(path, ec))
    throw weights_error(std::string(component_name(comp)) + " weights: '" + path +
                        "' does not exist" + kHelp);
  if (fs::is_directory(path, ec)) return from_source(open_in_folder(path, comp), comp);
  return from_source(TensorSource::open(path), comp);
}

WeightMap WeightMap::from_source(TensorSource src, Component comp) {
  WeightMap m;
  m.comp_ = comp;
  m.layout_ = detect_layout(src.names(), comp);
  // diffusers VAE: residual blocks per up block, for the flat original numbering.
  int resnets = 3;
  if (comp == Component::VAE && m.layout_ == Layout::Diffusers) {
    static const std::regex up(R"(decoder\.up_blocks\.0\.resnets\.(\d+)\..*)");
    int mx = -1;
    for (const auto& n : src.names()) {
      std::smatch mm;
      const std::string s2 = strip_prefix(n, comp);
      if (std::regex_match(s2, mm, up)) mx = std::max(mx, std::stoi(mm[1]));
    }
    if (mx >= 0) resnets = mx + 1;
  }
  for (const auto& n : src.names()) {
    const std::string c = comp == Component::VAE && m.layout_ == Layout::Diffusers
                              ? vae_from_diffusers(strip_prefix(n, comp), resnets)
                              : to_canonical(n, m.layout_, comp);
    if (c.empty()) continue;
    if (comp == Component::T5 && c == "shared.weight" && m.canon_to_file_.count(c)) continue;
    m.canon_to_file_[c] = n;
  }
  m.src_ = std::move(src);
  return m;
}

void WeightMap::merge(const std::string& path) {
  TensorSource extra = TensorSource::open(path);
  const Layout l = detect_layout(extra.names(), comp_);
  std::vector<std::string> names = src_.files();
  for (const auto& f : extra.files()) names.push_back(f);
  TensorSource all = TensorSource::open_files(names);
  for (const auto& n : extra.names()) {
    const std::string c = to_canonical(n, l, comp_);
    if (!c.empty()) canon_to_file_[c] = n;
  }
  src_ = std::move(all);
}

bool WeightMap::has(const std::string& c) const { return canon_to_file_.count(c) != 0; }

Shape WeightMap::shape(const std::string& c) const {
  auto it = canon_to_file_.find(c);
  if (it == canon_to_file_.end()) throw weights_error(src_.describe() + ": missing tensor '" + c + "'");
  return src_.info(it->second).shape;
}

Tensor WeightMap::load_f32(const std::string& c) const {
  auto it = canon_to_file_.find(c);
  if (it == canon_to_file_.end()) throw weights_error(src_.describe() + ": missing tensor '" + c + "'");
  return src_.load_f32(it->second);
}

Tensor WeightMap::view(const std::string& c) const {
  auto it = canon_to_file_.find(c);
  if (it == canon_to_file_.end()) throw weights_error(src_.describe() + ": missing tensor '" + c + "'");
  return src_.view(it->second);
}

std::vector<std::string> WeightMap::canonical_names() const {
  std::vector<std::string> r;
  for (const auto& kv : canon_to_file_) r.push_back(kv.first);
  return r;
}

void WeightMap::check(const std::vector<WeightSpec>& expected, bool allow_extra) const {
  std::vector<std::string> missing, misshapen, extra;
  std::set<std::string> known;
  for (const auto& w : expected) {
    known.insert(w.name);
    auto it = canon_to_file_.find(w.name);
    if (it == canon_to_file_.end()) {
      if (!w.optional) missing.push_back(w.name + " " + shape_str(w.shape));
      continue;
    }
    const Shape got = src_.info(it->second).shape;
    if (got != w.shape)
      misshapen.push_back(w.name + ": expected " + shape_str(w.shape) + ", found " + shape_str(got));
  }
  if (!allow_extra) {
    std::set<std::string> used;  // file names bound to an expected canonical name
    for (const auto& k : known) {
      auto it = canon_to_file_.find(k);
      if (it != canon_to_file_.end()) used.insert(it->second);
    }
    for (const auto& n : src_.names())
      if (!used.count(n)) extra.push_back(n);
  }
  if (missing.empty() && misshapen.empty() && extra.empty()) return;
  std::string msg = src_.describe() + " (" + component_name(comp_) + ", " + layout_name(layout_) +
                    ") does not match the model config:";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    msg += "\n  " + std::to_string(v.size()) + " " + what + ":";
    for (size_t i = 0; i < v.size() && i < 50; ++i) msg += "\n    " + v[i];
    if (v.size() > 50) msg += "\n    ... and " + std::to_string(v.size() - 50) + " more";
  };
  list("missing", missing);
  list("misshapen", misshapen);
  list("unexpected", extra);
  throw weights_error(msg);
}

}  // namespace mg
