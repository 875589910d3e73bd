#include "pipeline/random_model.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "mogagen/checkpoint.h"
#include "mogagen/error.h"
#include "mogagen/log.h"
#include "mogagen/safetensors.h"
#include "models/umt5/umt5.h"
#include "models/wan_dit/wan_dit.h"
#include "models/wan_vae/wan_vae.h"
#include "pipeline/json_locate.h"
#include "pipeline/scheduler.h"

#ifdef MOGAGEN_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#endif

namespace fs = std::filesystem;

namespace mg {

std::string caption_corpus() {
  static const char* colors[] = {"red", "green", "blue", "yellow", "white", "black", "orange", "purple"};
  static const char* shapes[] = {"circle", "square", "triangle"};
  static const char* motions[] = {"moves left", "moves right", "moves up", "moves down",
                                  "turns", "grows", "shrinks", "stays still"};
  std::string out;
  int n = 0;
  for (const char* c : colors)
    for (const char* s : shapes)
      for (const char* m : motions) {
        const char* bg = colors[(n++ * 3 + 1) % 8];
        out += std::string("a ") + c + " " + s + " " + m + " on a " + bg + " background\n";
        out += std::string("the ") + c + " " + s + " " + m + "\n";
      }
  return out;
}

namespace {

nlohmann::json section(const nlohmann::json& cfg, const std::string& key, const std::string& path) {
  if (!cfg.contains(key) || !cfg[key].is_object())
    throw input_error(path + ": missing the \"" + key + "\" object (see configs/tiny-t2v.json)");
  return cfg[key];
}

// Random tensors by role: gains of norms 1, biases and modulation small, matrices scaled
// by 1/sqrt(fan_in). Portable: drawn from the Philox noise generator.
Tensor init_tensor(const WeightSpec& w, uint64_t seed) {
  const std::string& n = w.name;
  auto ends = [&](const char* s) {
    const std::string t(s);
    return n.size() >= t.size() && n.compare(n.size() - t.size(), t.size(), t) == 0;
  };
  const bool gain = ends(".gamma") || ((n.find("norm") != std::string::npos) && ends(".weight"));
  if (gain) {
    Tensor t = gaussian_noise(w.shape, seed);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = 1.0f + 0.05f * t.f32()[i];
    return t;
  }
  float scale;
  if (ends(".bias"))
    scale = 0.02f;
  else if (n.find("modulation") != std::string::npos)
    scale = 0.1f;
  else if (n.find("relative_attention_bias") != std::string::npos)
    scale = 0.5f;
  else if (n == "shared.weight")
    scale = 1.0f;
  else {
    const int64_t fan_in = w.shape.empty() || w.shape[0] == 0 ? 1 : shape_numel(w.shape) / w.shape[0];
    scale = 1.0f / std::sqrt(float(std::max<int64_t>(fan_in, 1)));
  }
  Tensor t = gaussian_noise(w.shape, seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] *= scale;
  // Spatial convolution kernels (3x3) of the VAE are made constant over their taps: random
  // blur filters, so a random model decodes to smooth pictures rather than pixel noise
  // (what video codecs and eyes expect of real output).
  if (w.shape.size() >= 4 && w.shape[w.shape.size() - 1] == 3 && w.shape[w.shape.size() - 2] == 3) {
    const int64_t taps = 9, groups = t.numel() / taps;
    for (int64_t g = 0; g < groups; ++g) {
      float* p = t.f32() + g * taps;
      for (int k = 1; k < taps; ++k) p[k] = p[0];
    }
  }
  return t;
}

void write_weights(const fs::path& file, const std::vector<WeightSpec>& specs, uint64_t seed,
                   bool include_optional) {
  std::map<std::string, Tensor> tensors;
  uint64_t k = 0;
  for (const auto& w : specs) {
    ++k;
    if (w.optional && !include_optional) continue;
    tensors[w.name] = init_tensor(w, seed * 1000003ull + k);
  }
  write_safetensors(file.string(), tensors, {{"format", "pt"}, {"producer", "mogagen make-random-model"}});
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream f(p);
  if (!f) throw io_error(p.string() + ": cannot write");
  f << j.dump(2) << "\n";
}

}  // namespace

void make_random_model(const RandomModelArgs& a) {
  const nlohmann::json cfg = parse_json_file(a.config).value;
  const fs::path out(a.output);
  std::error_code ec;
  if (fs::exists(out, ec) && !fs::is_empty(out, ec))
    throw io_error(a.output + ": exists and is not empty; choose a new folder");
  for (const char* sub : {"transformer", "text_encoder", "tokenizer", "vae"}) {
    fs::create_directories(out / sub, ec);
    if (ec) throw io_error((out / sub).string() + ": cannot create folder: " + ec.message());
  }

  // Tokenizer first: its vocabulary bounds the text encoder's.
#ifdef MOGAGEN_HAVE_SENTENCEPIECE
  const nlohmann::json tokcfg = cfg.value("tokenizer", nlohmann::json::object());
  const int vocab = tokcfg.value("vocab_size", 256);
  {
    const fs::path corpus = out / "tokenizer" / "corpus.txt";
    std::ofstream(corpus) << caption_corpus();
    const std::string args =
        "--input=" + corpus.string() + " --model_prefix=" + (out / "tokenizer" / "spiece").string() +
        " --vocab_size=" + std::to_string(vocab) +
        " --model_type=unigram --hard_vocab_limit=false --pad_id=0 --eos_id=1 --bos_id=2 "
        "--unk_id=3 --character_coverage=1.0 --minloglevel=2 --num_threads=1";
    sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned>(a.seed + 1));
    auto st = sentencepiece::SentencePieceTrainer::Train(args);
    if (!st.ok()) throw internal_error("training the tokenizer failed: " + st.ToString());
    fs::remove(corpus, ec);
    fs::remove(out / "tokenizer" / "spiece.vocab", ec);
  }
#else
  throw usage_error("make-random-model needs SentencePiece to write the tokenizer; install "
                    "libsentencepiece-dev and rebuild");
#endif

  const nlohmann::json tcfg = section(cfg, "t5", a.config);
  UMT5Config tc = UMT5Config::from_json(tcfg);
  write_json(out / "text_encoder" / "config.json", tcfg);
  write_weights(out / "text_encoder" / "model.safetensors", tc.expected_weights(), a.seed * 3 + 1, true);

  const nlohmann::json dcfg = section(cfg, "dit", a.config);
  WanDitConfig dc = WanDitConfig::from_json(dcfg);
  write_json(out / "transformer" / "config.json", dcfg);
  write_weights(out / "transformer" / "diffusion_pytorch_model.safetensors", dc.expected_weights(),
                a.seed * 3 + 2, dc.moga.groups > 0);

  const nlohmann::json vcfg = section(cfg, "vae", a.config);
  WanVaeConfig vc = WanVaeConfig::from_json(vcfg);
  write_json(out / "vae" / "config.json", vcfg);
  write_weights(out / "vae" / "diffusion_pytorch_model.safetensors", vc.expected_weights(),
                a.seed * 3 + 3, false);

  write_json(out / "model_index.json",
             {{"_class_name", "WanPipeline"},
              {"_mogagen", {{"random", true}, {"seed", a.seed}, {"config", a.config}}},
              {"transformer", {"diffusers", "WanTransformer3DModel"}},
              {"text_encoder", {"transformers", "UMT5EncoderModel"}},
              {"tokenizer", {"transformers", "T5TokenizerFast"}},
              {"vae", {"diffusers", "AutoencoderKLWan"}}});
  spdlog::info("wrote a random-weight model to {} (DiT dim {}, {} layers{})", a.output, dc.dim,
               dc.num_layers, dc.moga.groups ? ", MoGA M=" + std::to_string(dc.moga.groups) : "");
}

}  // namespace mg
