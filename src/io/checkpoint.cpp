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
  std::string r = n;
  for (const auto& p : c == Component::DiT ? dit : c == Component::VAE ? vae : t5)
    if (starts_with(n, p)) {
      r = n.substr(p.size());
      break;
    }
  // HF T5 encoder names saved without their "encoder." scope (a bare T5Stack).
  if (c == Component::T5 && (starts_with(r, "block.") || r == "final_layer_norm.weight" ||
                             r == "embed_tokens.weight"))
    r = "encoder." + r;
  return r;
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

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return s;
}

bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// Which component a file name suggests (ComfyUI / Wan-AI naming habits).
enum class Kind { DiT, VAE, T5, Other };
Kind file_kind(const fs::path& f) {
  const std::string n = lower(f.filename().string());
  if (n.find("vae") != std::string::npos) return Kind::VAE;
  if (n.find("t5") != std::string::npos || n.find("text_encoder") != std::string::npos)
    return Kind::T5;
  if (n.find("clip") != std::string::npos || n.find("image_encoder") != std::string::npos ||
      n.find("lora") != std::string::npos)
    return Kind::Other;
  return Kind::DiT;
}

Kind kind_of(Component c) {
  return c == Component::DiT ? Kind::DiT : c == Component::VAE ? Kind::VAE : Kind::T5;
}

const char* subfolder(Component c) {
  return c == Component::DiT ? "transformer" : c == Component::VAE ? "vae" : "text_encoder";
}

struct Listing {
  std::vector<fs::path> safetensors, indexes, pickles;
  std::vector<std::string> all;
};

Listing list_folder(const fs::path& dir) {
  Listing l;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    const bool dir_entry = e.is_directory(ec);
    l.all.push_back(f + (dir_entry ? "/" : ""));
    if (dir_entry) continue;
    const std::string lf = lower(f);
    if (ends_with(lf, ".safetensors")) l.safetensors.push_back(e.path());
    else if (ends_with(lf, ".safetensors.index.json")) l.indexes.push_back(e.path());
    else if (ends_with(lf, ".pth") || ends_with(lf, ".pt") || ends_with(lf, ".bin") ||
             ends_with(lf, ".ckpt"))
      l.pickles.push_back(e.path());
  }
  for (auto* v : {&l.safetensors, &l.indexes, &l.pickles}) std::sort(v->begin(), v->end());
  std::sort(l.all.begin(), l.all.end());
  return l;
}

std::string join_names(const std::vector<std::string>& v, size_t cap = 16) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < cap; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > cap) s += ", ... (" + std::to_string(v.size() - cap) + " more)";
  return s.empty() ? "(nothing)" : s;
}

// "name-00001-of-00003.safetensors" -> "name"; "" when not a shard name.
std::string shard_stem(const fs::path& f) {
  static const std::regex re(R"(^(.*)-\d+-of-\d+\.safetensors$)");
  std::smatch m;
  const std::string n = f.filename().string();
  return std::regex_match(n, m, re) ? std::string(m[1]) : "";
}

TensorSource open_paths(const std::vector<fs::path>& v) {
  std::vector<std::string> s;
  for (const auto& p : v) s.push_back(p.string());
  return TensorSource::open_files(s);
}

TensorSource open_in_folder(const fs::path& dir_in, Component comp) {
  fs::path dir = dir_in.lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();  // "transformer/" -> "transformer"
  std::error_code ec;
  const char* sub = subfolder(comp);
  // A diffusers root (or any folder with the component's diffusers subfolder).
  if (fs::exists(dir / "model_index.json", ec) || fs::is_directory(dir / sub, ec)) {
    if (!fs::is_directory(dir / sub, ec))
      throw weights_error(dir.string() + ": a diffusers folder (model_index.json) without " + sub +
                          "/ for the " + component_name(comp) + "; the folder holds: " +
                          join_names(list_folder(dir).all) + kHelp);
    return open_in_folder(dir / sub, comp);
  }
  const Listing l = list_folder(dir);
  // A component folder of its own (transformer/, vae/, text_encoder/): its weights, under the
  // diffusers / transformers file names (a variant such as *.fp16.safetensors only when alone).
  if (dir.filename() == sub) {
    for (const char* stem : {"diffusion_pytorch_model", "model"}) {
      const fs::path i = dir / (std::string(stem) + ".safetensors.index.json");
      if (fs::exists(i, ec)) return TensorSource::open(i.string());
      const fs::path f = dir / (std::string(stem) + ".safetensors");
      if (fs::exists(f, ec)) return open_paths({f});
    }
    if (l.indexes.size() == 1) return TensorSource::open(l.indexes[0].string());
    if (l.indexes.empty() && !l.safetensors.empty()) {
      const std::string stem = shard_stem(l.safetensors[0]);
      bool one_set = l.safetensors.size() == 1 || !stem.empty();
      for (const auto& f : l.safetensors) one_set = one_set && shard_stem(f) == stem;
      if (one_set) return open_paths(l.safetensors);
    }
  }
  const Kind want = kind_of(comp);
  // An index for this component (Wan-AI 14B: diffusion_pytorch_model.safetensors.index.json).
  std::vector<fs::path> idx;
  for (const auto& f : l.indexes)
    if (file_kind(f) == want) idx.push_back(f);
  if (idx.size() == 1) return TensorSource::open(idx[0].string());
  std::vector<fs::path> pick;
  if (idx.empty()) {
    for (const auto& f : l.safetensors)
      if (file_kind(f) == want) pick.push_back(f);
    if (pick.size() == 1) return open_paths(pick);
    if (pick.size() > 1) {
      const std::string stem = shard_stem(pick[0]);
      bool one_set = !stem.empty();
      for (const auto& f : pick) one_set = one_set && shard_stem(f) == stem;
      if (one_set) return open_paths(pick);  // shards of one file without an index
    }
  }
  if (idx.size() > 1 || pick.size() > 1) {
    std::vector<std::string> names;
    for (const auto& f : idx.size() > 1 ? idx : pick) names.push_back(f.filename().string());
    throw weights_error(dir.string() + ": several files could hold the " + component_name(comp) +
                        " weights (" + join_names(names) + "); pass the one to use as a file path" +
                        kHelp);
  }
  std::string looked = comp == Component::DiT
                           ? "diffusion_pytorch_model*.safetensors (+ .safetensors.index.json), "
                             "a ComfyUI wan2.1_t2v_*.safetensors, or transformer/"
                       : comp == Component::VAE
                           ? "Wan2.1_VAE.safetensors or any *vae*.safetensors, or vae/"
                           : "*umt5*.safetensors / *t5*.safetensors (+ index), or text_encoder/";
  std::string pth;
  for (const auto& f : l.pickles)
    if (file_kind(f) == want)
      pth += "; '" + f.filename().string() +
             "' is a PyTorch pickle, which mogagen does not read: use a safetensors copy";
  throw weights_error(dir.string() + ": found no " + component_name(comp) + " weights (looked for " +
                      looked + "); the folder holds: " + join_names(l.all) + pth + kHelp);
}

bool is_scaled_fp8_marker(const std::string& n) {
  return n == "scaled_fp8" || ends_with(n, ".scale_weight") || ends_with(n, ".scale_input");
}

// Residual blocks per decoder up block of a diffusers VAE (num_res_blocks + 1), for the flat
// original numbering.
int vae_resnets(const std::vector<std::string>& names) {
  static const std::regex up(R"(decoder\.up_blocks\.0\.resnets\.(\d+)\..*)");
  int mx = -1;
  for (const auto& n : names) {
    std::smatch mm;
    const std::string s2 = strip_prefix(n, Component::VAE);
    if (std::regex_match(s2, mm, up)) mx = std::max(mx, std::stoi(mm[1]));
  }
  return mx >= 0 ? mx + 1 : 3;
}

// Canonical names of a source's tensors under its detected layout (file name -> canonical).
std::vector<std::pair<std::string, std::string>> canonical_pairs(const TensorSource& src,
                                                                 Layout l, Component comp) {
  const std::vector<std::string> names = src.names();
  const int resnets = comp == Component::VAE && l == Layout::Diffusers ? vae_resnets(names) : 3;
  std::vector<std::pair<std::string, std::string>> r;
  for (const auto& n : names) {
    if (is_scaled_fp8_marker(strip_prefix(n, comp)))
      throw weights_error(src.describe() + ": tensor '" + n + "' marks a ComfyUI \"scaled fp8\" " +
                          component_name(comp) +
                          " checkpoint, whose fp8 weights need per-tensor scales that mogagen "
                          "does not apply; use the bf16/fp16 (or plain fp8_e4m3fn) file" + kHelp);
    const std::string c = comp == Component::VAE && l == Layout::Diffusers
                              ? vae_from_diffusers(strip_prefix(n, comp), resnets)
                              : to_canonical(n, l, comp);
    if (!c.empty()) r.emplace_back(n, c);
  }
  return r;
}

// Binds canonical names; for umT5, `shared.weight` wins over its tied alias
// `encoder.embed_tokens.weight`.
void bind_names(std::map<std::string, std::string>& m,
          const std::vector<std::pair<std::string, std::string>>& pairs, Component comp,
          bool replace) {
  std::map<std::string, std::string> fresh;
  for (const auto& [file, canon] : pairs) {
    auto it = fresh.find(canon);
    if (it != fresh.end()) {
      // Two file tensors with one canonical name: keep the one spelled canonically.
      if (strip_prefix(it->second, comp) == canon) continue;
    }
    fresh[canon] = file;
  }
  for (auto& [canon, file] : fresh)
    if (replace || !m.count(canon)) m[canon] = file;
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
  bind_names(m.canon_to_file_, canonical_pairs(src, m.layout_, comp), comp, true);
  m.src_ = std::move(src);
  return m;
}

void WeightMap::merge(const std::string& path) {
  TensorSource extra = TensorSource::open(path);
  const Layout l = detect_layout(extra.names(), comp_);
  const auto pairs = canonical_pairs(extra, l, comp_);
  src_.add(extra, /*replace=*/true);
  bind_names(canon_to_file_, pairs, comp_, /*replace=*/true);
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
    // A file tensor whose canonical name is bound to another file tensor is a duplicate
    // spelling (umT5's tied encoder.embed_tokens.weight, a router replaced by merge()): not
    // unexpected.
    auto shadowed = [&](const std::string& n) {
      for (Layout l : {Layout::WanOriginal, Layout::Diffusers, Layout::HuggingFace}) {
        const std::string c = to_canonical(n, l, comp_);
        auto it = c.empty() ? canon_to_file_.end() : canon_to_file_.find(c);
        if (it != canon_to_file_.end() && it->second != n && used.count(it->second)) return true;
      }
      return false;
    };
    for (const auto& n : src_.names())
      if (!used.count(n) && !shadowed(n)) extra.push_back(n);
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
