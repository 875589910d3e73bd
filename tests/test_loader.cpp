// safetensors reader and checkpoint layouts: every malformed-file case with its message,
// sharded checkpoints, dtype upcasts, layout detection and the golden weight files.
#include "test_util.h"
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>

#include "mogagen/checkpoint.h"
#include "mogagen/safetensors.h"

using namespace mg;
namespace fs = std::filesystem;

namespace {

std::string tmp(const std::string& name) {
  static const std::string dir = [] {
    std::string t = fs::temp_directory_path().string() + "/mogagen-loader-XXXXXX";
    return std::string(mkdtemp(t.data()));
  }();
  return dir + "/" + name;
}

// Writes a file from a header JSON string and a data blob.
std::string raw_file(const std::string& name, const std::string& header, size_t data_bytes,
                     int64_t header_len_override = -1) {
  const std::string p = tmp(name);
  std::ofstream f(p, std::ios::binary);
  const uint64_t n = header_len_override >= 0 ? uint64_t(header_len_override) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header;
  f << std::string(data_bytes, '\0');
  return p;
}

// Expects open() to fail with a BadWeights error whose message contains every needle.
void expect_error(const std::string& path, std::initializer_list<const char*> needles) {
  try {
    TensorSource::open(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights) << e.what();
    for (const char* n : needles)
      EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << "'" << n << "' not in: " << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << "path not in: " << e.what();
  }
}

std::string golden() { return testutil::golden_dir(); }

}  // namespace

TEST(Loader, RoundTripAndZeroCopyView) {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({7}, {1});
  const std::string p = tmp("rt.safetensors");
  write_safetensors(p, {{"a", a}, {"b", b}}, {{"k", "v"}});
  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->metadata().at("k"), "v");
  ASSERT_EQ(f->tensors().size(), 2u);
  Tensor va = f->view("a");
  EXPECT_EQ(va.shape(), (Shape{2, 3}));
  EXPECT_EQ(va.data<float>()[4], 5.0f);
  TensorSource s = TensorSource::open(p);
  EXPECT_EQ(rel_error(s.load_f32("a"), a), 0.0);
  EXPECT_THROW(s.load_f32("nope"), Error);
}

TEST(Loader, TruncatedFile) {
  const std::string p = tmp("short.safetensors");
  std::ofstream(p) << "abc";
  expect_error(p, {"truncated"});
  expect_error(raw_file("trunc-data.safetensors",
                        R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8),
               {"tensor 'x'", "past the data area", "truncated"});
}

TEST(Loader, HeaderLengthBeyondFile) {
  expect_error(raw_file("hlen.safetensors", "{}", 0, 4096), {"header length 4096", "past the end"});
  expect_error(raw_file("hbig.safetensors", "{}", 0, int64_t(1) << 40), {"100 MB"});
}

TEST(Loader, BadJsonHeader) {
  expect_error(raw_file("badjson.safetensors", R"({"x": {"dtype": )", 0), {"not valid JSON"});
  expect_error(raw_file("notobj.safetensors", "[1, 2]", 0), {"JSON object"});
  expect_error(raw_file("noshape.safetensors", R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", 4),
               {"tensor 'x'", "shape"});
}

TEST(Loader, UnknownDtype) {
  expect_error(raw_file("dtype.safetensors", R"({"x":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4),
               {"tensor 'x'", "unknown dtype 'F12'", "F32, BF16"});
}

TEST(Loader, SizeMustMatchShapeTimesDtype) {
  expect_error(raw_file("size.safetensors", R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
               {"tensor 'x'", "holds 8 bytes", "[3]", "needs 12"});
}

TEST(Loader, OverlappingOffsets) {
  expect_error(raw_file("overlap.safetensors",
                        R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
               {"'a'", "'b'", "overlap"});
}

TEST(Loader, OutOfRangeAndReversedOffsets) {
  expect_error(raw_file("range.safetensors", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
               {"tensor 'x'", "end 16", "past the data area of 8 bytes"});
  expect_error(raw_file("rev.safetensors", R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8),
               {"tensor 'x'", "begin after end"});
  expect_error(raw_file("neg.safetensors", R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4),
               {"tensor 'x'", "non-negative"});
}

TEST(Loader, UpcastsBf16F16Fp8) {
  Tensor v = Tensor::from_vector({1.5f, -2.0f, 0.25f}, {3});
  const std::string p = tmp("dtypes.safetensors");
  Tensor f8 = Tensor::empty({3}, DType::F8E4M3);
  const uint8_t f8v[3] = {0x3C, 0xC0, 0x28};  // 1.5, -2, 0.25 in E4M3
  std::memcpy(f8.raw(), f8v, 3);
  write_safetensors(p, {{"bf16", v.to(DType::BF16)}, {"f16", v.to(DType::F16)}, {"f8", f8}});
  TensorSource s = TensorSource::open(p);
  EXPECT_EQ(s.info("bf16").dtype, DType::BF16);
  for (const char* n : {"bf16", "f16", "f8"}) EXPECT_EQ(rel_error(s.load_f32(n), v), 0.0) << n;
}

TEST(Loader, ShardedIndex) {
  const std::string d = tmp("sharded");
  fs::create_directories(d);
  write_safetensors(d + "/m-00001-of-00002.safetensors", {{"a", Tensor::full({2}, 1.0f)}});
  write_safetensors(d + "/m-00002-of-00002.safetensors", {{"b", Tensor::full({3}, 2.0f)}});
  std::ofstream(d + "/m.safetensors.index.json")
      << R"({"metadata": {}, "weight_map": {"a": "m-00001-of-00002.safetensors", "b": "m-00002-of-00002.safetensors"}})";
  TensorSource s = TensorSource::open(d + "/m.safetensors.index.json");
  EXPECT_EQ(s.names().size(), 2u);
  EXPECT_EQ(s.load_f32("b").f32()[2], 2.0f);
  EXPECT_EQ(s.files().size(), 2u);
  // index pointing at a tensor that is not in its shard, or at a missing shard
  std::ofstream(d + "/bad.safetensors.index.json")
      << R"({"weight_map": {"a": "m-00002-of-00002.safetensors"}})";
  expect_error(d + "/bad.safetensors.index.json", {"'a'", "not in it"});
  std::ofstream(d + "/gone.safetensors.index.json") << R"({"weight_map": {"a": "nope.safetensors"}})";
  expect_error(d + "/gone.safetensors.index.json", {"nope.safetensors", "does not exist"});
  // the same name in two files
  write_safetensors(d + "/dup.safetensors", {{"a", Tensor::full({2}, 3.0f)}});
  try {
    TensorSource::open_files({d + "/m-00001-of-00002.safetensors", d + "/dup.safetensors"});
    ADD_FAILURE() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("appears in both"), std::string::npos) << e.what();
  }
}

TEST(Loader, MissingAndMisshapenTensorsReportedAtOnce) {
  const std::string p = tmp("dit-partial.safetensors");
  write_safetensors(p, {{"patch_embedding.weight", Tensor::zeros({8, 16, 1, 2, 2})},
                        {"head.head.weight", Tensor::zeros({64, 7})},
                        {"blocks.0.self_attn.q.weight", Tensor::zeros({8, 8})},
                        {"something.else", Tensor::zeros({1})}});
  WeightMap m = WeightMap::open(p, Component::DiT);
  std::vector<WeightSpec> want = {{"patch_embedding.weight", {8, 16, 1, 2, 2}},
                                  {"patch_embedding.bias", {8}},
                                  {"head.head.weight", {64, 8}},
                                  {"blocks.0.self_attn.q.weight", {8, 8}},
                                  {"blocks.0.self_attn.router.weight", {3, 8}, true}};
  try {
    m.check(want);
    ADD_FAILURE() << "check passed";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    EXPECT_NE(w.find("1 missing"), std::string::npos) << w;
    EXPECT_NE(w.find("patch_embedding.bias [8]"), std::string::npos) << w;
    EXPECT_NE(w.find("head.head.weight: expected [64, 8], found [64, 7]"), std::string::npos) << w;
    EXPECT_NE(w.find("1 unexpected"), std::string::npos) << w;
    EXPECT_NE(w.find("something.else"), std::string::npos) << w;
    EXPECT_EQ(w.find("router"), std::string::npos) << "optional tensor reported: " << w;
  }
}

TEST(Loader, LayoutDetectionFromNames) {
  EXPECT_EQ(detect_layout({"blocks.0.self_attn.q.weight", "head.head.weight"}, Component::DiT), Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"model.diffusion_model.blocks.0.self_attn.q.weight"}, Component::DiT), Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"blocks.0.attn1.to_q.weight", "proj_out.weight"}, Component::DiT), Layout::Diffusers);
  EXPECT_EQ(detect_layout({"decoder.upsamples.0.residual.0.gamma", "conv2.weight"}, Component::VAE), Layout::WanOriginal);
  EXPECT_EQ(detect_layout({"decoder.up_blocks.0.resnets.0.norm1.gamma", "post_quant_conv.weight"}, Component::VAE), Layout::Diffusers);
  EXPECT_EQ(detect_layout({"shared.weight", "encoder.block.0.layer.0.SelfAttention.q.weight"}, Component::T5), Layout::HuggingFace);
  EXPECT_EQ(detect_layout({"token_embedding.weight", "blocks.0.attn.q.weight"}, Component::T5), Layout::WanOriginal);
  EXPECT_THROW(detect_layout({"foo.bar"}, Component::DiT), Error);
  // name maps
  EXPECT_EQ(to_canonical("model.diffusion_model.blocks.3.ffn.0.weight", Layout::WanOriginal, Component::DiT), "blocks.3.ffn.0.weight");
  EXPECT_EQ(to_canonical("blocks.2.norm2.bias", Layout::Diffusers, Component::DiT), "blocks.2.norm3.bias");
  EXPECT_EQ(to_canonical("blocks.1.attn2.to_out.0.weight", Layout::Diffusers, Component::DiT), "blocks.1.cross_attn.o.weight");
  EXPECT_EQ(to_canonical("scale_shift_table", Layout::Diffusers, Component::DiT), "head.modulation");
  EXPECT_EQ(to_canonical("blocks.4.attn1.router.weight", Layout::Diffusers, Component::DiT), "blocks.4.self_attn.router.weight");
  EXPECT_EQ(to_canonical("decoder.up_blocks.1.upsamplers.0.time_conv.weight", Layout::Diffusers, Component::VAE), "decoder.upsamples.7.time_conv.weight");
  EXPECT_EQ(to_canonical("decoder.up_blocks.1.resnets.0.conv_shortcut.bias", Layout::Diffusers, Component::VAE), "decoder.upsamples.4.shortcut.bias");
  EXPECT_EQ(to_canonical("decoder.mid_block.attentions.0.to_qkv.weight", Layout::Diffusers, Component::VAE), "decoder.middle.1.to_qkv.weight");
  EXPECT_EQ(to_canonical("blocks.5.ffn.gate.0.weight", Layout::WanOriginal, Component::T5), "encoder.block.5.layer.1.DenseReluDense.wi_0.weight");
}

TEST(Loader, FolderLayouts) {
  // diffusers root: model_index.json + transformer/; ComfyUI-style single files in a folder.
  const std::string d = tmp("diffusers-root");
  fs::create_directories(d + "/transformer");
  std::ofstream(d + "/model_index.json") << "{}";
  write_safetensors(d + "/transformer/diffusion_pytorch_model.safetensors", {{"blocks.0.attn1.to_q.weight", Tensor::zeros({2, 2})}});
  WeightMap m = WeightMap::open(d, Component::DiT);
  EXPECT_EQ(m.layout(), Layout::Diffusers);
  EXPECT_TRUE(m.has("blocks.0.self_attn.q.weight"));
  try {
    WeightMap::open(d, Component::VAE);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without vae/"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Getting Wan2.1 weights"), std::string::npos) << e.what();
  }
  const std::string c = tmp("comfy");
  fs::create_directories(c);
  write_safetensors(c + "/wan2.1_t2v_1.3B_bf16.safetensors", {{"model.diffusion_model.head.head.weight", Tensor::zeros({64, 2}).to(DType::BF16)}});
  write_safetensors(c + "/wan_2.1_vae.safetensors", {{"decoder.conv1.weight", Tensor::zeros({1})}});
  write_safetensors(c + "/umt5_xxl_fp16.safetensors", {{"shared.weight", Tensor::zeros({4, 2}).to(DType::F16)}});
  EXPECT_TRUE(WeightMap::open(c, Component::DiT).has("head.head.weight"));
  EXPECT_TRUE(WeightMap::open(c, Component::VAE).has("decoder.conv1.weight"));
  EXPECT_TRUE(WeightMap::open(c, Component::T5).has("shared.weight"));
  const std::string e = tmp("empty");
  fs::create_directories(e);
  try {
    WeightMap::open(e, Component::DiT);
    ADD_FAILURE();
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("found no DiT weights"), std::string::npos) << err.what();
  }
}

TEST(Loader, GoldenWanAndDiffusersNamingsAgree) {
  if (!fs::exists(golden() + "/wan-a")) GTEST_SKIP() << "golden data absent: " << golden();
  for (const char* set : {"wan-a", "wan-c"})
    for (auto [comp, sub] : {std::pair{Component::DiT, "dit"}, std::pair{Component::VAE, "vae"}}) {
      const std::string d = golden() + "/" + set + "/" + sub;
      WeightMap a = WeightMap::open(d + "/weights_wan.safetensors", comp);
      WeightMap b = WeightMap::open(d + "/weights_diffusers.safetensors", comp);
      EXPECT_EQ(a.layout(), Layout::WanOriginal);
      EXPECT_EQ(b.layout(), Layout::Diffusers);
      ASSERT_EQ(a.canonical_names(), b.canonical_names()) << set << " " << sub;
      for (const auto& n : a.canonical_names())
        EXPECT_EQ(rel_error(a.load_f32(n), b.load_f32(n)), 0.0) << set << " " << n;
    }
  WeightMap t = WeightMap::open(golden() + "/wan-c/t5/weights_hf.safetensors", Component::T5);
  EXPECT_EQ(t.layout(), Layout::HuggingFace);
  EXPECT_TRUE(t.has("encoder.block.2.layer.0.SelfAttention.relative_attention_bias.weight"));
}
