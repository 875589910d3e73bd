// safetensors reader and writer: every field a hostile file can get wrong (each error's
// message is checked for the file, the tensor, what was expected and what was found),
// zero-copy views, dtype upcasts, sharded indexes and multi-file name spaces.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "mogagen/safetensors.h"
#include "test_util.h"

using namespace mg;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

namespace {

const std::string& tmpdir() {
  static const std::string dir = testutil::make_tmpdir("safetensors");
  return dir;
}

std::string tmp(const std::string& name) { return tmpdir() + "/" + name; }

// A file made of an 8-byte length, a header string and `data` (raw bytes).
std::string raw_file(const std::string& name, const std::string& header, const std::string& data,
                     int64_t header_len = -1) {
  const std::string p = tmp(name);
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  const uint64_t n = header_len >= 0 ? uint64_t(header_len) : header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
  return p;
}
std::string raw_file(const std::string& name, const std::string& header, size_t zero_bytes,
                     int64_t header_len = -1) {
  return raw_file(name, header, std::string(zero_bytes, '\0'), header_len);
}

// open() must fail with BadWeights; returns the message (empty when it did not fail).
std::string open_error(const std::string& path) {
  try {
    TensorSource::open(path);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error opening " << path;
  return "";
}

template <class T>
std::string bytes_of(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

}  // namespace

TEST(Safetensors, WriteIsValidSortedPaddedContiguous) {
  const std::string p = tmp("rt.safetensors");
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor z = Tensor::from_vector({7}, {1}).to(DType::BF16);
  Tensor m = Tensor::from_vector({8, 9}, {2}).to(DType::I64);
  write_safetensors(p, {{"zeta", z}, {"alpha", a}, {"mid", m}}, {{"format", "pt"}});

  std::ifstream in(p, std::ios::binary);
  uint64_t hl = 0;
  in.read(reinterpret_cast<char*>(&hl), 8);
  EXPECT_EQ(hl % 8, 0u) << "header not padded to a multiple of 8";
  std::string h(hl, '\0');
  in.read(h.data(), static_cast<std::streamsize>(hl));
  const auto j = nlohmann::json::parse(h);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  // sorted by name, contiguous from 0
  EXPECT_EQ(j["alpha"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(j["mid"]["data_offsets"], nlohmann::json({24, 40}));
  EXPECT_EQ(j["zeta"]["data_offsets"], nlohmann::json({40, 42}));
  EXPECT_EQ(j["zeta"]["dtype"], "BF16");
  EXPECT_EQ(fs::file_size(p), 8 + hl + 42);

  auto f = SafetensorsFile::open(p);
  EXPECT_EQ(f->path(), p);
  EXPECT_EQ(f->metadata().at("format"), "pt");
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors().at("mid").dtype, DType::I64);
  EXPECT_EQ(f->tensors().at("alpha").shape, (Shape{2, 3}));
}

TEST(Safetensors, ViewIsZeroCopyAndKeepsTheMappingAlive) {
  const std::string p = tmp("view.safetensors");
  write_safetensors(p, {{"a", Tensor::from_vector({1, 2, 3, 4}, {2, 2})}});
  Tensor v;
  const void* p1 = nullptr;
  {
    auto f = SafetensorsFile::open(p);
    v = f->view("a");
    p1 = f->view("a").raw();
    EXPECT_THROW(f->view("nope"), Error);
  }  // the file object is gone; the view must still be readable
  EXPECT_EQ(v.raw(), p1) << "two views of one tensor should share the mapped bytes";
  EXPECT_EQ(v.dtype(), DType::F32);
  EXPECT_EQ(v.shape(), (Shape{2, 2}));
  EXPECT_EQ(v.data<float>()[3], 4.0f);
  TensorSource s = TensorSource::open(p);
  Tensor l = s.load_f32("a");
  EXPECT_NE(l.raw(), s.view("a").raw()) << "load_f32 must copy";
  EXPECT_EQ(l.f32()[2], 3.0f);
}

TEST(Safetensors, TruncatedFile) {
  const std::string p = tmp("short.safetensors");
  std::ofstream(p) << "abc";
  std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("3 bytes"));
  EXPECT_THAT(e, HasSubstr("truncated"));
  // the data area is cut short
  const std::string q = raw_file("trunc-data.safetensors",
                                 R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8);
  e = open_error(q);
  EXPECT_THAT(e, HasSubstr(q));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("end 16"));
  EXPECT_THAT(e, HasSubstr("data area of 8 bytes"));
}

TEST(Safetensors, HeaderLengthBeyondFileOrLimit) {
  const std::string p = raw_file("hlen.safetensors", "{}", 0, 4096);
  std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("header length 4096"));
  EXPECT_THAT(e, HasSubstr("10-byte file"));
  e = open_error(raw_file("hbig.safetensors", "{}", 0, int64_t(1) << 40));
  EXPECT_THAT(e, HasSubstr("100 MB"));
  // a zip (PyTorch .pth) gets a hint
  const std::string z = tmp("model.pth");
  std::ofstream(z, std::ios::binary) << "PK\x03\x04" << std::string(64, 'x');
  e = open_error(z);
  EXPECT_THAT(e, HasSubstr("zip"));
  EXPECT_THAT(e, HasSubstr("convert"));
}

TEST(Safetensors, BadJsonHeader) {
  const std::string p = raw_file("badjson.safetensors", R"({"x": {"dtype": )", 0);
  std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("not valid JSON"));
  EXPECT_THAT(open_error(raw_file("notobj.safetensors", "[1, 2]", 0)),
              HasSubstr("must be a JSON object, found array"));
  EXPECT_THAT(open_error(raw_file("entry.safetensors", R"({"x": 5})", 0)),
              HasSubstr("tensor 'x': expected an object with dtype, shape, data_offsets, found number"));
  e = open_error(raw_file("nodtype.safetensors", R"({"x":{"shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("missing \"dtype\""));
  e = open_error(raw_file("numdtype.safetensors", R"({"x":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("\"dtype\" must be a string, found number 7"));
  e = open_error(raw_file("noshape.safetensors", R"({"x":{"dtype":"F32","data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("missing \"shape\""));
  e = open_error(raw_file("strshape.safetensors", R"({"x":{"dtype":"F32","shape":"4","data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("\"shape\" must be an array of dims, found string"));
  e = open_error(raw_file("fshape.safetensors", R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("non-negative integers, found 1.5"));
  e = open_error(raw_file("off3.safetensors", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8));
  EXPECT_THAT(e, HasSubstr("must be [begin, end], found [0,4,8]"));
  e = open_error(raw_file("offstr.safetensors", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":["0",4]}})", 4));
  EXPECT_THAT(e, HasSubstr("data_offsets must be non-negative integers"));
  e = open_error(raw_file("meta.safetensors", R"({"__metadata__":{"a":1}})", 0));
  EXPECT_THAT(e, HasSubstr("__metadata__[\"a\"] must be a string, found number"));
  e = open_error(raw_file("dup.safetensors",
                          R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                          R"("x":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8));
  EXPECT_THAT(e, HasSubstr("tensor 'x' is listed twice"));
}

TEST(Safetensors, UnknownDtype) {
  const std::string p =
      raw_file("dtype.safetensors", R"({"w":{"dtype":"F12","shape":[1],"data_offsets":[0,4]}})", 4);
  const std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("tensor 'w'"));
  EXPECT_THAT(e, HasSubstr("unknown dtype 'F12'"));
  EXPECT_THAT(e, HasSubstr("F32, BF16, F16, F8_E4M3, I64, I32, U8, BOOL"));
}

TEST(Safetensors, NegativeDimsAndReversedOffsets) {
  std::string e = open_error(
      raw_file("neg.safetensors", R"({"x":{"dtype":"F32","shape":[2,-1],"data_offsets":[0,4]}})", 4));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("non-negative integers, found -1"));
  e = open_error(raw_file("rev.safetensors", R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", 8));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("[8, 4]"));
  EXPECT_THAT(e, HasSubstr("begin after end"));
}

TEST(Safetensors, OutOfRangeOffsets) {
  const std::string p =
      raw_file("range.safetensors", R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8);
  const std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("end 16 is past the data area of 8 bytes"));
}

TEST(Safetensors, SizeMustEqualShapeTimesDtype) {
  const std::string p =
      raw_file("size.safetensors", R"({"x":{"dtype":"BF16","shape":[3,2],"data_offsets":[0,8]}})", 8);
  const std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("tensor 'x'"));
  EXPECT_THAT(e, HasSubstr("holds 8 bytes"));
  EXPECT_THAT(e, HasSubstr("[3, 2] x BF16 needs 12"));
  // overflowing numel is caught, not wrapped
  EXPECT_THAT(open_error(raw_file("huge.safetensors",
                                  R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}})",
                                  0)),
              HasSubstr("impossibly large"));
}

TEST(Safetensors, OverlappingOffsetsNameBothTensors) {
  const std::string p = raw_file("overlap.safetensors",
                                 R"({"first":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                 R"("second":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                 12);
  const std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("'first' [0, 8)"));
  EXPECT_THAT(e, HasSubstr("'second' [4, 12)"));
  EXPECT_THAT(e, HasSubstr("overlap"));
  // empty tensors take no bytes and never overlap
  const std::string ok = raw_file("empty-ok.safetensors",
                                  R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                                  R"("b":{"dtype":"F32","shape":[2,0],"data_offsets":[0,0]},)"
                                  R"("c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                                  4);
  TensorSource s = TensorSource::open(ok);
  EXPECT_EQ(s.load_f32("b").numel(), 0);
}

TEST(Safetensors, NotAFile) {
  std::string e = open_error(tmp("does-not-exist.safetensors"));
  EXPECT_THAT(e, HasSubstr("does-not-exist.safetensors"));
  EXPECT_THAT(e, HasSubstr("cannot open"));
  e = open_error(tmpdir());
  EXPECT_THAT(e, HasSubstr("found a directory"));
}

TEST(Safetensors, LoadF32Upcasts) {
  // Stored bit patterns and the values they encode.
  const std::vector<uint16_t> bf16 = {0x3FC0, 0xC000, 0x3E80, 0x0000, 0x8000, 0x7F80};
  const std::vector<float> bf16_v = {1.5f, -2.0f, 0.25f, 0.0f, -0.0f, INFINITY};
  const std::vector<uint16_t> f16 = {0x3E00, 0xC000, 0x3400, 0x0001, 0x7BFF, 0xFC00};
  const std::vector<float> f16_v = {1.5f, -2.0f, 0.25f, 5.9604645e-8f, 65504.0f, -INFINITY};
  const std::vector<uint8_t> f8 = {0x3C, 0xC0, 0x28, 0x01, 0x7E, 0x00};
  const std::vector<float> f8_v = {1.5f, -2.0f, 0.25f, 0.001953125f, 448.0f, 0.0f};
  const std::vector<int64_t> i64 = {-3, 0, 1 << 20};
  const std::vector<int32_t> i32 = {-7, 8, 9};
  const std::vector<uint8_t> u8 = {0, 200, 255};
  auto wrap = [](const void* d, Shape s, DType t) {
    return Tensor::wrap(const_cast<void*>(d), s, t, Device::cpu(), nullptr).clone();
  };
  const std::string p = tmp("dtypes.safetensors");
  write_safetensors(p, {{"bf16", wrap(bf16.data(), {2, 3}, DType::BF16)},
                        {"f16", wrap(f16.data(), {6}, DType::F16)},
                        {"f8", wrap(f8.data(), {3, 2}, DType::F8E4M3)},
                        {"i64", wrap(i64.data(), {3}, DType::I64)},
                        {"i32", wrap(i32.data(), {3}, DType::I32)},
                        {"u8", wrap(u8.data(), {3}, DType::U8)},
                        {"bool", wrap(std::vector<uint8_t>{1, 0, 1}.data(), {3}, DType::BOOL)}});
  TensorSource s = TensorSource::open(p);
  EXPECT_EQ(s.info("f8").dtype, DType::F8E4M3);
  EXPECT_EQ(s.view("f16").dtype(), DType::F16);
  auto expect_values = [&](const char* name, const std::vector<float>& want) {
    Tensor t = s.load_f32(name);
    ASSERT_EQ(t.dtype(), DType::F32) << name;
    ASSERT_EQ(t.numel(), int64_t(want.size())) << name;
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(t.f32()[i], want[i]) << name << "[" << i << "]";
      EXPECT_EQ(std::signbit(t.f32()[i]), std::signbit(want[i])) << name << "[" << i << "]";
    }
  };
  expect_values("bf16", bf16_v);
  expect_values("f16", f16_v);
  expect_values("f8", f8_v);
  expect_values("i64", {-3.0f, 0.0f, 1048576.0f});
  expect_values("i32", {-7.0f, 8.0f, 9.0f});
  expect_values("u8", {0.0f, 200.0f, 255.0f});
  expect_values("bool", {1.0f, 0.0f, 1.0f});
  EXPECT_EQ(s.load_f32("bf16").shape(), (Shape{2, 3}));
}

TEST(Safetensors, UnalignedDataArea) {
  // A 5-byte header leaves the data area at byte 13: views are unaligned, loads still exact.
  const std::vector<float> v = {1.25f, -3.5f};
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[8,10]}})";
  const std::string p = raw_file("unaligned.safetensors", h + "   ",
                                 bytes_of(v) + bytes_of(std::vector<uint16_t>{0x4040}));
  TensorSource s = TensorSource::open(p);
  Tensor a = s.load_f32("a");
  EXPECT_EQ(a.f32()[0], 1.25f);
  EXPECT_EQ(a.f32()[1], -3.5f);
  EXPECT_EQ(s.load_f32("b").f32()[0], 3.0f);
}

TEST(Safetensors, ShardedIndexRoundTrip) {
  const std::string d = tmp("sharded");
  fs::create_directories(d);
  write_safetensors(d + "/m-00001-of-00002.safetensors",
                    {{"a", Tensor::full({2}, 1.0f)}, {"c", Tensor::full({1}, 3.0f).to(DType::BF16)}});
  write_safetensors(d + "/m-00002-of-00002.safetensors", {{"b", Tensor::full({3}, 2.0f)}});
  std::ofstream(d + "/m.safetensors.index.json")
      << R"({"metadata": {"total_size": 22}, "weight_map": {"a": "m-00001-of-00002.safetensors",)"
         R"( "b": "m-00002-of-00002.safetensors", "c": "m-00001-of-00002.safetensors"}})";
  TensorSource s = TensorSource::open(d + "/m.safetensors.index.json");
  EXPECT_EQ(s.names(), (std::vector<std::string>{"a", "b", "c"}));
  ASSERT_EQ(s.files().size(), 2u);
  EXPECT_EQ(s.info("b").file, 1);
  EXPECT_EQ(s.info("c").dtype, DType::BF16);
  EXPECT_EQ(s.load_f32("b").f32()[2], 2.0f);
  EXPECT_EQ(s.load_f32("c").f32()[0], 3.0f);
  EXPECT_THAT(s.describe(), HasSubstr("m-00001-of-00002.safetensors"));
  EXPECT_TRUE(s.has("a"));
  EXPECT_FALSE(s.has("z"));
  try {
    s.info("z");
    ADD_FAILURE() << "info() of an absent tensor";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    EXPECT_THAT(std::string(e.what()), HasSubstr("no tensor named 'z'"));
  }
}

TEST(Safetensors, ShardedIndexErrors) {
  const std::string d = tmp("sharded-bad");
  fs::create_directories(d);
  write_safetensors(d + "/s1.safetensors", {{"a", Tensor::full({2}, 1.0f)}});
  write_safetensors(d + "/s2.safetensors", {{"b", Tensor::full({2}, 1.0f)}});
  auto index = [&](const std::string& name, const std::string& body) {
    std::ofstream(d + "/" + name) << body;
    return d + "/" + name;
  };
  std::string p = index("wrong.safetensors.index.json",
                        R"({"weight_map": {"a": "s2.safetensors", "b": "s2.safetensors", "q": "s1.safetensors"}})");
  std::string e = open_error(p);
  EXPECT_THAT(e, HasSubstr(p));
  EXPECT_THAT(e, HasSubstr("2 tensors"));
  EXPECT_THAT(e, HasSubstr("tensor 'a' is listed in shard"));
  EXPECT_THAT(e, HasSubstr("found in '" + d + "/s1.safetensors'"));
  EXPECT_THAT(e, HasSubstr("tensor 'q'"));
  EXPECT_THAT(e, HasSubstr("nor in any other shard"));
  p = index("gone.safetensors.index.json", R"({"weight_map": {"a": "nope-00001.safetensors"}})");
  e = open_error(p);
  EXPECT_THAT(e, HasSubstr("shard 'nope-00001.safetensors' listed for tensor 'a' does not exist"));
  EXPECT_THAT(e, HasSubstr(d + "/nope-00001.safetensors"));
  EXPECT_THAT(open_error(index("nomap.safetensors.index.json", R"({"metadata": {}})")),
              HasSubstr("no \"weight_map\" object"));
  EXPECT_THAT(open_error(index("num.safetensors.index.json", R"({"weight_map": {"a": 3}})")),
              HasSubstr("weight_map[\"a\"] must be a shard file name, found 3"));
  EXPECT_THAT(open_error(index("json.safetensors.index.json", R"({"weight_map": )")),
              HasSubstr("not valid JSON"));
  EXPECT_THAT(open_error(d + "/absent.safetensors.index.json"), HasSubstr("cannot open the shard index"));
}

TEST(Safetensors, DuplicateNamesAcrossFiles) {
  const std::string a = tmp("dup-a.safetensors"), b = tmp("dup-b.safetensors");
  write_safetensors(a, {{"w", Tensor::full({2}, 1.0f)}, {"x", Tensor::full({1}, 0.0f)}});
  write_safetensors(b, {{"w", Tensor::full({2}, 2.0f)}});
  try {
    TensorSource::open_files({a, b});
    ADD_FAILURE() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::BadWeights);
    const std::string m = e.what();
    EXPECT_THAT(m, HasSubstr("tensor 'w'"));
    EXPECT_THAT(m, HasSubstr(a));
    EXPECT_THAT(m, HasSubstr(b));
  }
  // add(): an error too, unless the new tensors are to replace the old ones
  TensorSource s = TensorSource::open(a);
  EXPECT_THROW(s.add(TensorSource::open(b)), Error);
  s.add(TensorSource::open(b), /*replace=*/true);
  EXPECT_EQ(s.load_f32("w").f32()[0], 2.0f);
  EXPECT_EQ(s.load_f32("x").f32()[0], 0.0f);
  EXPECT_EQ(s.files().size(), 2u);
}

TEST(Safetensors, InMemorySource) {
  TensorSource s = TensorSource::from_tensors({{"t", Tensor::full({2, 2}, 0.5f).to(DType::BF16)}}, "(test)");
  EXPECT_EQ(s.describe(), "(test)");
  EXPECT_EQ(s.info("t").shape, (Shape{2, 2}));
  EXPECT_EQ(s.view("t").dtype(), DType::BF16);
  EXPECT_EQ(s.load_f32("t").f32()[3], 0.5f);
  EXPECT_TRUE(s.files().empty());
  const std::string p = tmp("mem-add.safetensors");
  write_safetensors(p, {{"u", Tensor::full({1}, 4.0f)}});
  s.add(TensorSource::open(p));
  EXPECT_EQ(s.load_f32("u").f32()[0], 4.0f);
  EXPECT_EQ(s.load_f32("t").f32()[0], 0.5f);
}
