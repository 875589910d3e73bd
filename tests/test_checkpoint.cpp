// Checkpoint layouts and name maps: detection for each layout (from name lists and from
// the golden files), ComfyUI wrapper prefixes, the diffusers / Wan / HF tables, folder
// discovery, WeightMap::check reporting every problem at once, merge(), and the golden
// sets' two namings of the same weights agreeing bit for bit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>

#include "mogagen/checkpoint.h"
#include "test_util.h"

using namespace mg;
using ::testing::HasSubstr;
using ::testing::Not;
namespace fs = std::filesystem;

namespace {

const std::string& tmpdir() {
  static const std::string dir = testutil::make_tmpdir("checkpoint");
  return dir;
}

std::string tmp(const std::string& name) {
  const std::string p = tmpdir() + "/" + name;
  fs::create_directories(fs::path(p).parent_path());
  return p;
}

// Writes tensors of the given names, each [2] filled with its index + 1.
std::string write_names(const std::string& path, const std::vector<std::string>& names) {
  std::map<std::string, Tensor> m;
  for (size_t i = 0; i < names.size(); ++i) m[names[i]] = Tensor::full({2}, float(i + 1));
  write_safetensors(path, m);
  return path;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return "";
}

bool bit_equal(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

std::string golden() { return testutil::golden_dir(); }

#define REQUIRE_GOLDEN()                                                                   \
  if (!fs::exists(golden() + "/wan-a"))                                                    \
  GTEST_SKIP() << "golden reference data absent (" << golden()                             \
               << "); set MOGAGEN_GOLDEN_DIR or place it at ../shared/golden"

}  // namespace

TEST(Checkpoint, DetectLayoutFromNames) {
  EXPECT_EQ(detect_layout({"blocks.0.self_attn.q.weight", "head.head.weight"}, Component::DiT),
            Layout::WanOriginal);
  for (const char* p : {"model.diffusion_model.", "diffusion_model.", "model."})
    EXPECT_EQ(detect_layout({std::string(p) + "blocks.0.cross_attn.k.weight",
                             std::string(p) + "head.modulation"},
                            Component::DiT),
              Layout::WanOriginal)
        << p;
  EXPECT_EQ(detect_layout({"condition_embedder.time_proj.weight", "blocks.0.attn1.to_q.weight",
                           "proj_out.weight", "scale_shift_table"},
                          Component::DiT),
            Layout::Diffusers);
  EXPECT_EQ(detect_layout({"blocks.3.attn1.router.weight"}, Component::DiT), Layout::Diffusers);
  EXPECT_EQ(detect_layout({"blocks.3.self_attn.router.weight"}, Component::DiT), Layout::WanOriginal);

  EXPECT_EQ(detect_layout({"decoder.upsamples.0.residual.0.gamma", "conv2.weight"}, Component::VAE),
            Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"first_stage_model.decoder.conv1.weight"}, Component::VAE),
            Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"vae.conv2.weight"}, Component::VAE), Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"decoder.up_blocks.0.resnets.0.norm1.gamma", "post_quant_conv.weight"},
                          Component::VAE),
            Layout::Diffusers);

  EXPECT_EQ(detect_layout({"shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"},
                          Component::T5),
            Layout::HuggingFace);
  EXPECT_EQ(detect_layout({"text_encoder.encoder.block.0.layer.0.SelfAttention.q.weight"}, Component::T5),
            Layout::HuggingFace);
  EXPECT_EQ(detect_layout({"block.0.layer.0.SelfAttention.q.weight", "final_layer_norm.weight"},
                          Component::T5),
            Layout::HuggingFace);
  EXPECT_EQ(detect_layout({"token_embedding.weight", "blocks.0.attn.q.weight"}, Component::T5),
            Layout::WanOriginal);

  const std::string e = error_of([] { detect_layout({"foo.bar", "baz"}, Component::VAE); });
  EXPECT_THAT(e, HasSubstr("VAE"));
  EXPECT_THAT(e, HasSubstr("foo.bar"));
  EXPECT_THAT(e, HasSubstr("Getting Wan2.1 weights"));
}

TEST(Checkpoint, DitDiffusersTable) {
  // wan-notes §1.3, every row, plus the MoGA router.
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"patch_embedding.weight", "patch_embedding.weight"},
      {"condition_embedder.text_embedder.linear_1.weight", "text_embedding.0.weight"},
      {"condition_embedder.text_embedder.linear_2.bias", "text_embedding.2.bias"},
      {"condition_embedder.time_embedder.linear_1.bias", "time_embedding.0.bias"},
      {"condition_embedder.time_embedder.linear_2.weight", "time_embedding.2.weight"},
      {"condition_embedder.time_proj.weight", "time_projection.1.weight"},
      {"blocks.7.scale_shift_table", "blocks.7.modulation"},
      {"blocks.0.attn1.to_q.weight", "blocks.0.self_attn.q.weight"},
      {"blocks.0.attn1.to_k.bias", "blocks.0.self_attn.k.bias"},
      {"blocks.0.attn1.to_v.weight", "blocks.0.self_attn.v.weight"},
      {"blocks.12.attn1.to_out.0.weight", "blocks.12.self_attn.o.weight"},
      {"blocks.0.attn1.norm_q.weight", "blocks.0.self_attn.norm_q.weight"},
      {"blocks.0.attn1.norm_k.weight", "blocks.0.self_attn.norm_k.weight"},
      {"blocks.1.attn2.to_q.bias", "blocks.1.cross_attn.q.bias"},
      {"blocks.1.attn2.to_k.weight", "blocks.1.cross_attn.k.weight"},
      {"blocks.1.attn2.to_v.weight", "blocks.1.cross_attn.v.weight"},
      {"blocks.1.attn2.to_out.0.bias", "blocks.1.cross_attn.o.bias"},
      {"blocks.1.attn2.norm_q.weight", "blocks.1.cross_attn.norm_q.weight"},
      {"blocks.1.attn2.norm_k.weight", "blocks.1.cross_attn.norm_k.weight"},
      {"blocks.2.norm2.weight", "blocks.2.norm3.weight"},  // diffusers swaps norm2 / norm3
      {"blocks.2.norm2.bias", "blocks.2.norm3.bias"},
      {"blocks.2.ffn.net.0.proj.weight", "blocks.2.ffn.0.weight"},
      {"blocks.2.ffn.net.2.bias", "blocks.2.ffn.2.bias"},
      {"proj_out.weight", "head.head.weight"},
      {"scale_shift_table", "head.modulation"},
      {"blocks.4.attn1.router.weight", "blocks.4.self_attn.router.weight"},
      {"blocks.4.attn1.router.bias", "blocks.4.self_attn.router.bias"},
  };
  for (const auto& [d, o] : rows) {
    EXPECT_EQ(to_canonical(d, Layout::Diffusers, Component::DiT), o) << d;
    EXPECT_EQ(to_canonical(o, Layout::WanOriginal, Component::DiT), o) << o;
  }
  EXPECT_EQ(to_canonical("condition_embedder.image_embedder.ff.net.0.proj.weight", Layout::Diffusers,
                         Component::DiT),
            "");
}

TEST(Checkpoint, ComfyUIPrefixStripping) {
  for (const char* p : {"model.diffusion_model.", "diffusion_model.", "model."})
    EXPECT_EQ(to_canonical(std::string(p) + "blocks.3.ffn.0.weight", Layout::WanOriginal, Component::DiT),
              "blocks.3.ffn.0.weight")
        << p;
  EXPECT_EQ(to_canonical("first_stage_model.decoder.head.2.weight", Layout::WanOriginal, Component::VAE),
            "decoder.head.2.weight");
  EXPECT_EQ(to_canonical("vae.conv2.bias", Layout::WanOriginal, Component::VAE), "conv2.bias");
  EXPECT_EQ(to_canonical("text_encoders.umt5xxl.transformer.shared.weight", Layout::HuggingFace,
                         Component::T5),
            "shared.weight");

  // A ComfyUI single file loads under canonical names, layout WanOriginal.
  const std::string p = tmp("comfy/wan2.1_t2v_1.3B_bf16.safetensors");
  write_safetensors(p, {{"model.diffusion_model.head.head.weight", Tensor::full({4, 2}, 1.5f).to(DType::BF16)},
                        {"model.diffusion_model.blocks.0.self_attn.q.weight", Tensor::zeros({2, 2})}});
  WeightMap m = WeightMap::open(p, Component::DiT);
  EXPECT_EQ(m.layout(), Layout::WanOriginal);
  EXPECT_EQ(m.canonical_names(), (std::vector<std::string>{"blocks.0.self_attn.q.weight", "head.head.weight"}));
  EXPECT_EQ(m.shape("head.head.weight"), (Shape{4, 2}));
  EXPECT_EQ(m.view("head.head.weight").dtype(), DType::BF16);
  EXPECT_EQ(m.load_f32("head.head.weight").f32()[7], 1.5f);
  m.check({{"head.head.weight", {4, 2}}, {"blocks.0.self_attn.q.weight", {2, 2}}});
  const std::string e = error_of([&] { m.load_f32("head.head.bias"); });
  EXPECT_THAT(e, HasSubstr("head.head.bias"));
  EXPECT_THAT(e, HasSubstr(p));
}

TEST(Checkpoint, VaeDiffusersTable) {
  // wan-notes §3.6 (num_res_blocks 2: 3 resnets per up block, then the upsampler).
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"decoder.conv_in.weight", "decoder.conv1.weight"},
      {"encoder.conv_in.bias", "encoder.conv1.bias"},
      {"decoder.mid_block.resnets.0.norm1.gamma", "decoder.middle.0.residual.0.gamma"},
      {"decoder.mid_block.resnets.0.conv1.weight", "decoder.middle.0.residual.2.weight"},
      {"decoder.mid_block.resnets.1.norm2.gamma", "decoder.middle.2.residual.3.gamma"},
      {"decoder.mid_block.resnets.1.conv2.bias", "decoder.middle.2.residual.6.bias"},
      {"decoder.mid_block.attentions.0.norm.gamma", "decoder.middle.1.norm.gamma"},
      {"decoder.mid_block.attentions.0.to_qkv.weight", "decoder.middle.1.to_qkv.weight"},
      {"decoder.mid_block.attentions.0.proj.bias", "decoder.middle.1.proj.bias"},
      {"encoder.mid_block.attentions.0.proj.weight", "encoder.middle.1.proj.weight"},
      {"decoder.up_blocks.0.resnets.0.conv1.weight", "decoder.upsamples.0.residual.2.weight"},
      {"decoder.up_blocks.0.resnets.2.conv2.weight", "decoder.upsamples.2.residual.6.weight"},
      {"decoder.up_blocks.1.resnets.0.conv_shortcut.weight", "decoder.upsamples.4.shortcut.weight"},
      {"decoder.up_blocks.2.resnets.1.norm1.gamma", "decoder.upsamples.9.residual.0.gamma"},
      {"decoder.up_blocks.3.resnets.2.norm2.gamma", "decoder.upsamples.14.residual.3.gamma"},
      {"decoder.up_blocks.0.upsamplers.0.resample.1.weight", "decoder.upsamples.3.resample.1.weight"},
      {"decoder.up_blocks.0.upsamplers.0.time_conv.bias", "decoder.upsamples.3.time_conv.bias"},
      {"decoder.up_blocks.1.upsamplers.0.time_conv.weight", "decoder.upsamples.7.time_conv.weight"},
      {"decoder.up_blocks.2.upsamplers.0.resample.1.bias", "decoder.upsamples.11.resample.1.bias"},
      {"decoder.norm_out.gamma", "decoder.head.0.gamma"},
      {"decoder.conv_out.weight", "decoder.head.2.weight"},
      {"encoder.norm_out.gamma", "encoder.head.0.gamma"},
      {"encoder.conv_out.bias", "encoder.head.2.bias"},
      {"encoder.down_blocks.0.norm1.gamma", "encoder.downsamples.0.residual.0.gamma"},
      {"encoder.down_blocks.5.conv_shortcut.weight", "encoder.downsamples.5.shortcut.weight"},
      {"encoder.down_blocks.2.resample.1.weight", "encoder.downsamples.2.resample.1.weight"},
      {"encoder.down_blocks.5.time_conv.bias", "encoder.downsamples.5.time_conv.bias"},
      {"quant_conv.weight", "conv1.weight"},
      {"post_quant_conv.bias", "conv2.bias"},
  };
  for (const auto& [d, o] : rows) {
    EXPECT_EQ(to_canonical(d, Layout::Diffusers, Component::VAE), o) << d;
    EXPECT_EQ(to_canonical(o, Layout::WanOriginal, Component::VAE), o) << o;
  }
}

TEST(Checkpoint, T5Tables) {
  const std::vector<std::pair<std::string, std::string>> rows = {
      {"token_embedding.weight", "shared.weight"},
      {"blocks.3.norm1.weight", "encoder.block.3.layer.0.layer_norm.weight"},
      {"blocks.3.attn.q.weight", "encoder.block.3.layer.0.SelfAttention.q.weight"},
      {"blocks.3.attn.k.weight", "encoder.block.3.layer.0.SelfAttention.k.weight"},
      {"blocks.3.attn.v.weight", "encoder.block.3.layer.0.SelfAttention.v.weight"},
      {"blocks.3.attn.o.weight", "encoder.block.3.layer.0.SelfAttention.o.weight"},
      {"blocks.23.pos_embedding.embedding.weight",
       "encoder.block.23.layer.0.SelfAttention.relative_attention_bias.weight"},
      {"blocks.3.norm2.weight", "encoder.block.3.layer.1.layer_norm.weight"},
      {"blocks.3.ffn.gate.0.weight", "encoder.block.3.layer.1.DenseReluDense.wi_0.weight"},
      {"blocks.3.ffn.fc1.weight", "encoder.block.3.layer.1.DenseReluDense.wi_1.weight"},
      {"blocks.3.ffn.fc2.weight", "encoder.block.3.layer.1.DenseReluDense.wo.weight"},
      {"norm.weight", "encoder.final_layer_norm.weight"},
  };
  for (const auto& [w, h] : rows) {
    EXPECT_EQ(to_canonical(w, Layout::WanOriginal, Component::T5), h) << w;
    EXPECT_EQ(to_canonical(h, Layout::HuggingFace, Component::T5), h) << h;
  }
  EXPECT_EQ(to_canonical("encoder.embed_tokens.weight", Layout::HuggingFace, Component::T5), "shared.weight");
  EXPECT_EQ(to_canonical("block.0.layer.1.DenseReluDense.wo.weight", Layout::HuggingFace, Component::T5),
            "encoder.block.0.layer.1.DenseReluDense.wo.weight");
  EXPECT_EQ(to_canonical("lm_head.weight", Layout::HuggingFace, Component::T5), "");
}

TEST(Checkpoint, T5SharedWinsOverItsAlias) {
  const std::string p = tmp("t5-both.safetensors");
  write_safetensors(p, {{"shared.weight", Tensor::full({4, 2}, 1.0f)},
                        {"encoder.embed_tokens.weight", Tensor::full({4, 2}, 2.0f)},
                        {"encoder.final_layer_norm.weight", Tensor::full({2}, 1.0f)}});
  WeightMap m = WeightMap::open(p, Component::T5);
  EXPECT_EQ(m.layout(), Layout::HuggingFace);
  EXPECT_EQ(m.load_f32("shared.weight").f32()[0], 1.0f);
  // the tied alias is no unexpected tensor
  m.check({{"shared.weight", {4, 2}}, {"encoder.final_layer_norm.weight", {2}}});
  // alone, the alias stands in for shared.weight
  const std::string q = tmp("t5-alias.safetensors");
  write_safetensors(q, {{"encoder.embed_tokens.weight", Tensor::full({4, 2}, 2.0f)}});
  WeightMap a = WeightMap::open(q, Component::T5);
  EXPECT_EQ(a.load_f32("shared.weight").f32()[0], 2.0f);
  a.check({{"shared.weight", {4, 2}}});
}

TEST(Checkpoint, CheckReportsMissingMisshapenAndUnexpectedAtOnce) {
  const std::string p = tmp("dit-partial.safetensors");
  write_safetensors(p, {{"patch_embedding.weight", Tensor::zeros({8, 16, 1, 2, 2})},
                        {"head.head.weight", Tensor::zeros({64, 7})},
                        {"blocks.0.self_attn.q.weight", Tensor::zeros({8, 8})},
                        {"something.else", Tensor::zeros({1})}});
  WeightMap m = WeightMap::open(p, Component::DiT);
  const std::vector<WeightSpec> want = {{"patch_embedding.weight", {8, 16, 1, 2, 2}},
                                        {"patch_embedding.bias", {8}},
                                        {"head.head.weight", {64, 8}},
                                        {"blocks.0.self_attn.q.weight", {8, 8}},
                                        {"blocks.0.self_attn.router.weight", {3, 8}, true}};
  const std::string e = error_of([&] { m.check(want); });
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("1 missing"));
  EXPECT_THAT(e, HasSubstr("patch_embedding.bias [8]"));
  EXPECT_THAT(e, HasSubstr("1 misshapen"));
  EXPECT_THAT(e, HasSubstr("head.head.weight: expected [64, 8], found [64, 7]"));
  EXPECT_THAT(e, HasSubstr("1 unexpected"));
  EXPECT_THAT(e, HasSubstr("something.else"));
  EXPECT_THAT(e, Not(HasSubstr("router"))) << "an optional tensor was reported";
  // allow_extra: the unexpected tensor alone no longer fails, the rest still does
  const std::string e2 = error_of([&] { m.check(want, true); });
  EXPECT_THAT(e2, Not(HasSubstr("something.else")));
  EXPECT_THAT(e2, HasSubstr("patch_embedding.bias"));
  std::vector<WeightSpec> ok = {want[0], want[3], {"head.head.weight", {64, 7}}};
  m.check(ok, true);
}

TEST(Checkpoint, CheckCapsLongLists) {
  const std::string p = tmp("dit-one.safetensors");
  write_safetensors(p, {{"head.head.weight", Tensor::zeros({1})}});
  WeightMap m = WeightMap::open(p, Component::DiT);
  std::vector<WeightSpec> want = {{"head.head.weight", {1}}};
  for (int i = 0; i < 80; ++i) want.push_back({"blocks." + std::to_string(i) + ".modulation", {1, 6, 4}});
  const std::string e = error_of([&] { m.check(want); });
  EXPECT_THAT(e, HasSubstr("80 missing"));
  EXPECT_THAT(e, HasSubstr("... and 30 more"));
  EXPECT_THAT(e, HasSubstr("blocks.0.modulation [1, 6, 4]"));
}

TEST(Checkpoint, ScaledFp8IsRefusedClearly) {
  const std::string p = tmp("wan2.1_t2v_14B_fp8_scaled.safetensors");
  write_safetensors(p, {{"blocks.0.self_attn.q.weight", Tensor::zeros({2, 2})},
                        {"blocks.0.self_attn.q.scale_weight", Tensor::zeros({1})},
                        {"scaled_fp8", Tensor::zeros({0})}});
  const std::string e = error_of([&] { WeightMap::open(p, Component::DiT); });
  EXPECT_THAT(e, HasSubstr("scaled fp8"));
  EXPECT_THAT(e, HasSubstr("bf16/fp16"));
}

TEST(Checkpoint, MergeReplacesAndDoesNotLeaveStrays) {
  // Base with routers in diffusers names; the merged file has original names for block 0
  // and a new tensor for block 1.
  const std::string base = tmp("merge/base.safetensors");
  write_safetensors(base, {{"blocks.0.attn1.to_q.weight", Tensor::full({2, 2}, 1.0f)},
                           {"blocks.0.attn1.router.weight", Tensor::full({3, 2}, 1.0f)}});
  const std::string extra = tmp("merge/routers.safetensors");
  write_safetensors(extra, {{"blocks.0.self_attn.router.weight", Tensor::full({3, 2}, 2.0f)},
                            {"blocks.1.self_attn.router.weight", Tensor::full({3, 2}, 3.0f)}});
  WeightMap m = WeightMap::open(base, Component::DiT);
  m.merge(extra);
  EXPECT_EQ(m.layout(), Layout::Diffusers);
  EXPECT_EQ(m.load_f32("blocks.0.self_attn.router.weight").f32()[0], 2.0f);
  EXPECT_EQ(m.load_f32("blocks.1.self_attn.router.weight").f32()[0], 3.0f);
  EXPECT_EQ(m.load_f32("blocks.0.self_attn.q.weight").f32()[0], 1.0f);
  EXPECT_EQ(m.source().files().at(0), base) << "the base file stays first (config.json beside it)";
  m.check({{"blocks.0.self_attn.q.weight", {2, 2}},
           {"blocks.0.self_attn.router.weight", {3, 2}},
           {"blocks.1.self_attn.router.weight", {3, 2}}});
  // The same file names in both: the merged file wins, no duplicate-name error.
  const std::string again = tmp("merge/again.safetensors");
  write_safetensors(again, {{"blocks.1.self_attn.router.weight", Tensor::full({3, 2}, 4.0f)}});
  m.merge(again);
  EXPECT_EQ(m.load_f32("blocks.1.self_attn.router.weight").f32()[0], 4.0f);
}

TEST(Checkpoint, FolderDiffusersRoot) {
  const std::string d = tmp("diffusers-root/model_index.json");
  std::ofstream(d) << "{}";
  const std::string root = fs::path(d).parent_path().string();
  fs::create_directories(root + "/transformer");
  fs::create_directories(root + "/vae");
  fs::create_directories(root + "/text_encoder");
  write_names(root + "/transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
              {"blocks.0.attn1.to_q.weight", "proj_out.weight"});
  write_names(root + "/transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
              {"blocks.0.norm2.weight"});
  std::ofstream(root + "/transformer/diffusion_pytorch_model.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"blocks.0.attn1.to_q.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",)"
         R"( "proj_out.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",)"
         R"( "blocks.0.norm2.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}})";
  write_names(root + "/vae/diffusion_pytorch_model.safetensors",
              {"decoder.conv_in.weight", "post_quant_conv.weight"});
  write_names(root + "/vae/diffusion_pytorch_model.fp16.safetensors", {"decoder.conv_in.weight"});
  write_names(root + "/text_encoder/model.safetensors", {"shared.weight", "encoder.final_layer_norm.weight"});

  WeightMap dit = WeightMap::open(root, Component::DiT);
  EXPECT_EQ(dit.layout(), Layout::Diffusers);
  EXPECT_EQ(dit.source().files().size(), 2u);
  EXPECT_EQ(dit.canonical_names(), (std::vector<std::string>{"blocks.0.norm3.weight",
                                                             "blocks.0.self_attn.q.weight",
                                                             "head.head.weight"}));
  WeightMap vae = WeightMap::open(root, Component::VAE);
  EXPECT_EQ(vae.layout(), Layout::Diffusers);
  EXPECT_TRUE(vae.has("decoder.conv1.weight"));
  EXPECT_TRUE(vae.has("conv2.weight"));
  EXPECT_EQ(vae.source().files().size(), 1u) << "the fp16 variant must not be mixed in";
  WeightMap t5 = WeightMap::open(root, Component::T5);
  EXPECT_EQ(t5.layout(), Layout::HuggingFace);
  EXPECT_TRUE(t5.has("shared.weight"));
  // component folders directly, with and without a trailing slash
  EXPECT_TRUE(WeightMap::open(root + "/vae/", Component::VAE).has("decoder.conv1.weight"));
  EXPECT_TRUE(WeightMap::open(root + "/transformer", Component::DiT).has("head.head.weight"));
  EXPECT_TRUE(WeightMap::open(root + "/transformer/diffusion_pytorch_model.safetensors.index.json",
                              Component::DiT)
                  .has("blocks.0.norm3.weight"));
}

TEST(Checkpoint, FolderWanAIAndComfyUI) {
  const std::string root = fs::path(tmp("wan-ai/x")).parent_path().string();
  write_names(root + "/diffusion_pytorch_model-00001-of-00002.safetensors", {"blocks.0.self_attn.q.weight"});
  write_names(root + "/diffusion_pytorch_model-00002-of-00002.safetensors", {"head.head.weight"});
  std::ofstream(root + "/diffusion_pytorch_model.safetensors.index.json")
      << R"({"weight_map": {"blocks.0.self_attn.q.weight": "diffusion_pytorch_model-00001-of-00002.safetensors",)"
         R"( "head.head.weight": "diffusion_pytorch_model-00002-of-00002.safetensors"}})";
  write_names(root + "/Wan2.1_VAE.safetensors", {"decoder.conv1.weight", "conv2.weight"});
  write_names(root + "/models_t5_umt5-xxl-enc-bf16.safetensors",
              {"token_embedding.weight", "blocks.0.attn.q.weight", "norm.weight"});
  std::ofstream(root + "/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth") << "x";
  std::ofstream(root + "/config.json") << "{}";

  WeightMap dit = WeightMap::open(root, Component::DiT);
  EXPECT_EQ(dit.layout(), Layout::WanOriginal);
  EXPECT_EQ(dit.canonical_names().size(), 2u);
  WeightMap vae = WeightMap::open(root, Component::VAE);
  EXPECT_EQ(vae.layout(), Layout::WanOriginal);
  EXPECT_TRUE(vae.has("conv2.weight"));
  WeightMap t5 = WeightMap::open(root, Component::T5);
  EXPECT_EQ(t5.layout(), Layout::WanOriginal);
  EXPECT_EQ(t5.canonical_names(),
            (std::vector<std::string>{"encoder.block.0.layer.0.SelfAttention.q.weight",
                                      "encoder.final_layer_norm.weight", "shared.weight"}));
  EXPECT_EQ(t5.load_f32("shared.weight").f32()[0], 1.0f);  // token_embedding.weight, written first

  // ComfyUI: one file per component, wrapper prefixes
  const std::string c = fs::path(tmp("comfy-dir/x")).parent_path().string();
  write_names(c + "/wan2.1_t2v_1.3B_fp16.safetensors", {"model.diffusion_model.head.head.weight"});
  write_names(c + "/wan_2.1_vae.safetensors", {"first_stage_model.decoder.conv1.weight"});
  write_names(c + "/umt5_xxl_fp16.safetensors", {"shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"});
  EXPECT_TRUE(WeightMap::open(c, Component::DiT).has("head.head.weight"));
  EXPECT_TRUE(WeightMap::open(c, Component::VAE).has("decoder.conv1.weight"));
  EXPECT_TRUE(WeightMap::open(c, Component::T5).has("encoder.block.0.layer.0.SelfAttention.q.weight"));
  // two candidate DiT files: ambiguous, say which
  write_names(c + "/wan2.1_t2v_14B_fp16.safetensors", {"model.diffusion_model.head.head.weight"});
  const std::string e = error_of([&] { WeightMap::open(c, Component::DiT); });
  EXPECT_THAT(e, HasSubstr("several files"));
  EXPECT_THAT(e, HasSubstr("wan2.1_t2v_14B_fp16.safetensors"));
  EXPECT_THAT(e, HasSubstr("wan2.1_t2v_1.3B_fp16.safetensors"));
}

TEST(Checkpoint, FolderWithNothingUsable) {
  const std::string root = fs::path(tmp("nothing/x")).parent_path().string();
  std::ofstream(root + "/Wan2.1_VAE.pth") << "x";
  std::ofstream(root + "/notes.txt") << "x";
  std::string e = error_of([&] { WeightMap::open(root, Component::VAE); });
  EXPECT_THAT(e, HasSubstr(root));
  EXPECT_THAT(e, HasSubstr("found no VAE weights"));
  EXPECT_THAT(e, HasSubstr("looked for"));
  EXPECT_THAT(e, HasSubstr("*vae*.safetensors"));
  EXPECT_THAT(e, HasSubstr("notes.txt"));
  EXPECT_THAT(e, HasSubstr("'Wan2.1_VAE.pth' is a PyTorch pickle"));
  EXPECT_THAT(e, HasSubstr("README.md, section \"Getting Wan2.1 weights\""));
  e = error_of([&] { WeightMap::open(root, Component::DiT); });
  EXPECT_THAT(e, HasSubstr("found no DiT weights"));
  EXPECT_THAT(e, HasSubstr("diffusion_pytorch_model"));
  e = error_of([&] { WeightMap::open(root + "/absent", Component::T5); });
  EXPECT_THAT(e, HasSubstr("does not exist"));
  EXPECT_THAT(e, HasSubstr("Getting Wan2.1 weights"));
  // a diffusers root without the component's folder
  std::ofstream(root + "/model_index.json") << "{}";
  e = error_of([&] { WeightMap::open(root, Component::T5); });
  EXPECT_THAT(e, HasSubstr("without text_encoder/"));
}

TEST(Checkpoint, GoldenLayoutDetection) {
  REQUIRE_GOLDEN();
  for (const char* set : {"wan-a", "wan-c"}) {
    const std::string g = golden() + "/" + set;
    EXPECT_EQ(WeightMap::open(g + "/dit/weights_wan.safetensors", Component::DiT).layout(), Layout::WanOriginal);
    EXPECT_EQ(WeightMap::open(g + "/dit/weights_diffusers.safetensors", Component::DiT).layout(), Layout::Diffusers);
    EXPECT_EQ(WeightMap::open(g + "/vae/weights_wan.safetensors", Component::VAE).layout(), Layout::WanOriginal);
    EXPECT_EQ(WeightMap::open(g + "/vae/weights_diffusers.safetensors", Component::VAE).layout(), Layout::Diffusers);
    EXPECT_EQ(WeightMap::open(g + "/t5/weights_hf.safetensors", Component::T5).layout(), Layout::HuggingFace);
    EXPECT_EQ(detect_layout(TensorSource::open(g + "/dit/weights_diffusers.safetensors").names(), Component::DiT),
              Layout::Diffusers);
  }
  const std::string moga = golden() + "/moga-a/weights_wan.safetensors";
  if (fs::exists(moga)) {
    WeightMap m = WeightMap::open(moga, Component::DiT);
    EXPECT_EQ(m.layout(), Layout::WanOriginal);
    EXPECT_TRUE(m.has("blocks.0.self_attn.router.weight"));
    EXPECT_TRUE(m.has("blocks.0.self_attn.router.bias"));
    EXPECT_TRUE(m.has("blocks.1.self_attn.router.weight"));
  }
}

TEST(Checkpoint, GoldenDiffusersEqualsWan) {
  REQUIRE_GOLDEN();
  for (const char* set : {"wan-a", "wan-c"})
    for (auto [comp, sub] : {std::pair{Component::DiT, "dit"}, std::pair{Component::VAE, "vae"}}) {
      const std::string d = golden() + "/" + set + "/" + sub;
      const WeightMap w = WeightMap::open(d + "/weights_wan.safetensors", comp);
      const WeightMap df = WeightMap::open(d + "/weights_diffusers.safetensors", comp);
      SCOPED_TRACE(std::string(set) + "/" + sub);
      // every file tensor has a canonical name, and the two namings give the same set
      EXPECT_EQ(df.canonical_names().size(), df.source().names().size());
      EXPECT_EQ(w.canonical_names().size(), w.source().names().size());
      ASSERT_EQ(w.canonical_names(), df.canonical_names());
      for (const auto& n : w.canonical_names()) {
        EXPECT_TRUE(bit_equal(w.view(n), df.view(n))) << n;
        EXPECT_TRUE(bit_equal(w.load_f32(n), df.load_f32(n))) << n;
      }
      // and each validates against the other's names and shapes, strictly
      std::vector<WeightSpec> spec;
      for (const auto& n : w.canonical_names()) spec.push_back({n, w.shape(n)});
      df.check(spec);
      if (comp == Component::VAE) {
        EXPECT_TRUE(df.has("encoder.conv1.weight"));
        EXPECT_TRUE(df.has("decoder.head.2.weight"));
        EXPECT_TRUE(df.has("conv1.weight"));
      }
    }
}

TEST(Checkpoint, GoldenT5WanNamesEqualHf) {
  REQUIRE_GOLDEN();
  // Rename the HF golden file to Wan names (inverse of wan-notes §2.4) and load both.
  const WeightMap hf = WeightMap::open(golden() + "/wan-c/t5/weights_hf.safetensors", Component::T5);
  static const std::vector<std::pair<std::string, std::string>> inv = {
      {"layer.0.layer_norm.weight", "norm1.weight"},
      {"layer.0.SelfAttention.q.weight", "attn.q.weight"},
      {"layer.0.SelfAttention.k.weight", "attn.k.weight"},
      {"layer.0.SelfAttention.v.weight", "attn.v.weight"},
      {"layer.0.SelfAttention.o.weight", "attn.o.weight"},
      {"layer.0.SelfAttention.relative_attention_bias.weight", "pos_embedding.embedding.weight"},
      {"layer.1.layer_norm.weight", "norm2.weight"},
      {"layer.1.DenseReluDense.wi_0.weight", "ffn.gate.0.weight"},
      {"layer.1.DenseReluDense.wi_1.weight", "ffn.fc1.weight"},
      {"layer.1.DenseReluDense.wo.weight", "ffn.fc2.weight"}};
  std::map<std::string, Tensor> wan;
  const std::regex blk(R"(^encoder\.block\.(\d+)\.(.*)$)");
  for (const auto& n : hf.canonical_names()) {
    std::smatch m;
    std::string w;
    if (n == "shared.weight") w = "token_embedding.weight";
    else if (n == "encoder.final_layer_norm.weight") w = "norm.weight";
    else if (std::regex_match(n, m, blk))
      for (const auto& [h, x] : inv)
        if (m[2] == h) w = "blocks." + std::string(m[1]) + "." + x;
    ASSERT_FALSE(w.empty()) << n;
    wan[w] = hf.view(n).clone();
  }
  const std::string p = tmp("t5-wan-names.safetensors");
  write_safetensors(p, wan);
  const WeightMap w = WeightMap::open(p, Component::T5);
  EXPECT_EQ(w.layout(), Layout::WanOriginal);
  ASSERT_EQ(w.canonical_names(), hf.canonical_names());
  for (const auto& n : w.canonical_names()) EXPECT_TRUE(bit_equal(w.view(n), hf.view(n))) << n;
  std::vector<WeightSpec> spec;
  for (const auto& n : hf.canonical_names()) spec.push_back({n, hf.shape(n)});
  hf.check(spec);  // the golden file holds shared.weight and its tied alias: not unexpected
  w.check(spec);
}
